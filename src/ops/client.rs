//! The client side of the ops port: one GET to a node's ops server over HTTP/1.1 (hyper), for
//! `weft status --healthz-port`. The peer of [`super::local`], which asks the node in this
//! network namespace over its instance socket instead.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::StatusCode;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the request and the whole answer may take once connected.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a node's ops server gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum OpsClientError {
    /// The client's runtime could not start.
    #[error("starting the tokio runtime")]
    Runtime(#[source] std::io::Error),
    /// Connecting failed (nothing listens there, no route).
    #[error("connecting to the node at {addr} (is `weft run --healthz-port` set?)")]
    Connect {
        /// The node's ops address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than 3 s.
    #[error("connecting to the node at {addr} (is `weft run --healthz-port` set?): no answer within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout {
        /// The node's ops address.
        addr: SocketAddr,
    },
    /// The request could not be built (a path that is no URI path).
    #[error("{path} from {addr}")]
    Request {
        /// The path asked for.
        path: String,
        /// The node's ops address.
        addr: SocketAddr,
        /// What is wrong with the request.
        #[source]
        source: hyper::http::Error,
    },
    /// The HTTP exchange failed.
    #[error("{path} from {addr}")]
    Exchange {
        /// The path asked for.
        path: String,
        /// The node's ops address.
        addr: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The answer took longer than 5 s once connected.
    #[error("{path}: no answer from {addr} within {} s", EXCHANGE_TIMEOUT.as_secs())]
    ExchangeTimeout {
        /// The path asked for.
        path: String,
        /// The node's ops address.
        addr: SocketAddr,
    },
    /// The node answered, but not 200; `body` is its reason.
    #[error("{path}: {status}: {body}")]
    Status {
        /// The path asked for.
        path: String,
        /// The HTTP status.
        status: StatusCode,
        /// The node's answer, trimmed.
        body: String,
    },
}

/// GETs `path` from the node's ops server at `addr`; returns the body of a 200 answer, or an
/// error naming the status and the node's reason. Blocks (on a runtime of its own).
pub fn get(addr: SocketAddr, path: &str) -> Result<String, OpsClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OpsClientError::Runtime)?;
    rt.block_on(get_async(addr, path))
}

async fn get_async(addr: SocketAddr, path: &str) -> Result<String, OpsClientError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| OpsClientError::ConnectTimeout { addr })?
        .map_err(|source| OpsClientError::Connect { addr, source })?;
    let (status, body) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, addr, path))
        .await
        .map_err(|_| OpsClientError::ExchangeTimeout {
            path: path.to_string(),
            addr,
        })??;
    if status != StatusCode::OK {
        return Err(OpsClientError::Status {
            path: path.to_string(),
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(body)
}

/// One request and its whole answer over `stream`.
async fn exchange(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    path: &str,
) -> Result<(StatusCode, String), OpsClientError> {
    let failed = |source| OpsClientError::Exchange {
        path: path.to_string(),
        addr,
        source,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(failed)?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|source| OpsClientError::Request {
            path: path.to_string(),
            addr,
            source,
        })?;
    let resp = sender.send_request(req).await.map_err(failed)?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(failed)?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connection_names_the_address_and_the_flag() {
        // Port 1 on loopback: nothing listens, the kernel refuses at once.
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = get(addr, "/status").unwrap_err();
        assert!(matches!(e, OpsClientError::Connect { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "connecting to the node at 127.0.0.1:1 (is `weft run --healthz-port` set?)"
        );
    }

    #[test]
    fn non_200_answers_carry_status_and_reason() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let body = "starting: no lease yet\n";
            let _ = write!(
                conn,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        let e = get(addr, "/status").unwrap_err();
        server.join().unwrap();
        assert_eq!(
            e.to_string(),
            "/status: 503 Service Unavailable: starting: no lease yet"
        );
    }
}
