//! The HTTP/1.1 server of the ops endpoints, on hyper. What an exposed port needs beyond
//! parsing: a bound on request heads ([`MAX_HEADER_BYTES`], 431 beyond it), a deadline for
//! them ([`HEADER_READ_TIMEOUT`]) and for the whole exchange ([`CONNECTION_DEADLINE`]), at
//! most [`MAX_CONNECTIONS`] connections at once, and accept errors (EMFILE) logged at most
//! once per [`ACCEPT_LOG_EVERY`] with a short back-off instead of a busy loop.
//!
//! At the connection limit a new connection is admitted by closing the oldest one that has
//! not yet delivered its request head, so idle or trickling clients cannot lock out a liveness
//! probe; only when every slot is busy answering does the accept loop wait for one. Each
//! connection carries one request (no keep-alive): a held-open scrape connection would
//! occupy a slot between scrapes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{route, OpsState, ALLOWED_METHODS};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The read buffer of a connection (hyper's minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 16 * 1024;
/// Time a client has to deliver its whole request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may take from accept to its last response byte.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// Accept errors are logged at most this often (with the count of those not logged).
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(5);
/// First and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Binds the ops listener; logs where it serves.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr).await?;
    info!(%addr, "serving /healthz, /readyz, /metrics and /status");
    Ok(l)
}

/// The running ops server; dropping it stops it.
#[derive(Debug)]
pub struct OpsServer {
    task: JoinHandle<()>,
    addr: SocketAddr,
}

impl OpsServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves the endpoints from `state` until the returned handle is dropped.
pub async fn spawn(addr: SocketAddr, state: OpsState) -> std::io::Result<OpsServer> {
    let listener = bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok(OpsServer {
        task: tokio::spawn(serve(listener, state)),
        addr,
    })
}

/// Serves the endpoints on an already bound listener (bound by the node, or handed over by
/// the weft it takes over from) until the returned handle is dropped.
pub fn spawn_on(listener: std::net::TcpListener, state: OpsState) -> std::io::Result<OpsServer> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    info!(%addr, "serving /healthz, /readyz, /metrics and /status");
    Ok(OpsServer {
        task: tokio::spawn(serve(listener, state)),
        addr,
    })
}

/// The HTTP answer to `req`: the routed reply; for HEAD the same headers (Content-Length of
/// the GET body) and no body; `Allow` with a 405.
pub fn respond<B>(req: &Request<B>, state: &OpsState) -> Response<Full<Bytes>> {
    let reply = route(req.method(), req.uri().path(), state);
    let len = reply.body.len();
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(reply.body)
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if reply.status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    }
    resp
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: OpsState) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_BYTES)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(false)
        // A client may shut its sending side once the request is out (`nc -N`, some probes);
        // without this hyper takes that EOF for an abort and closes without answering.
        .half_close(true);
    let slots = Arc::new(Slots::new(MAX_CONNECTIONS));
    let mut errors = AcceptErrors::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => {
                errors.succeeded();
                c
            }
            Err(e) => {
                let (log, pause) = errors.failed(Instant::now());
                if let Some(suppressed) = log {
                    warn!(error = %e, suppressed, pause_ms = pause.as_millis() as u64, "ops accept failed");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let ticket = slots.admit().await;
        let (http, state) = (http.clone(), state.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| {
                ticket.head_received();
                std::future::ready(Ok::<_, Infallible>(respond(&req, &state)))
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_DEADLINE, conn) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, error = %crate::error::Chain(&e), "ops connection failed"),
                    Err(_) => debug!(%peer, "ops connection closed at its deadline"),
                },
                () = ticket.evicted() => debug!(%peer, "ops connection closed to admit a newer one"),
            }
        });
    }
}

/// The connection slots: how many are open, and which of them still wait for their request
/// head (those may be closed to admit a new connection at the limit).
#[derive(Debug)]
struct Slots {
    max: usize,
    inner: Mutex<SlotsInner>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct SlotsInner {
    open: usize,
    next_id: u64,
    /// Connections without a request head yet, oldest first, with their eviction signal.
    waiting: BTreeMap<u64, Arc<Notify>>,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
struct Ticket {
    slots: Arc<Slots>,
    id: u64,
    evict: Arc<Notify>,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            inner: Mutex::default(),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection: a free one, else the one of the oldest connection still
    /// waiting for its request head (closed for it), else the next one freed.
    async fn admit(self: &Arc<Self>) -> Ticket {
        loop {
            {
                let mut s = self.lock();
                if s.open < self.max {
                    s.open += 1;
                    let id = s.next_id;
                    s.next_id += 1;
                    let evict = Arc::new(Notify::new());
                    s.waiting.insert(id, evict.clone());
                    return Ticket {
                        slots: self.clone(),
                        id,
                        evict,
                    };
                }
                if let Some((_, evict)) = s.waiting.pop_first() {
                    // Its task closes the connection and drops its ticket, which frees the slot.
                    evict.notify_one();
                }
            }
            self.freed.notified().await;
        }
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open
    }
}

impl Ticket {
    /// The request head is in: the connection is being answered and is not evicted any more.
    fn head_received(&self) {
        self.slots.lock().waiting.remove(&self.id);
    }

    /// Completes when the slot is taken back for a newer connection.
    async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        {
            let mut s = self.slots.lock();
            s.waiting.remove(&self.id);
            s.open = s.open.saturating_sub(1);
        }
        self.slots.freed.notify_one();
    }
}

/// Failed accepts (EMFILE, ENFILE, ENOBUFS...): when to log and how long to pause.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    suppressed: u64,
    backoff: Duration,
}

impl AcceptErrors {
    /// Notes a failure at `now`: `Some(failures not logged since the last log line)` when
    /// this one is to be logged, and the pause before the next accept (doubling up to a
    /// second while failures last).
    fn failed(&mut self, now: Instant) -> (Option<u64>, Duration) {
        self.backoff = (self.backoff * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
        let due = self
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= ACCEPT_LOG_EVERY);
        if due {
            self.last_logged = Some(now);
            let n = std::mem::take(&mut self.suppressed);
            (Some(n), self.backoff)
        } else {
            self.suppressed += 1;
            (None, self.backoff)
        }
    }

    /// An accept succeeded: the next failure pauses briefly again.
    fn succeeded(&mut self) {
        self.backoff = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{LeaseTable, SharedTable};
    use http_body_util::BodyExt;

    fn state() -> OpsState {
        OpsState::new(SharedTable::new(LeaseTable::empty(24)))
    }

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    async fn body(resp: Response<Full<Bytes>>) -> String {
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn head_has_the_length_of_get_and_no_body() {
        let s = state();
        let get = respond(&req(Method::GET, "/metrics"), &s);
        let head = respond(&req(Method::HEAD, "/metrics"), &s);
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(
            get.headers()[CONTENT_LENGTH],
            head.headers()[CONTENT_LENGTH]
        );
        let text = body(get).await;
        assert!(text.contains("weft_packets_total"), "{text}");
        assert_eq!(body(head).await, "");
    }

    #[tokio::test]
    async fn other_methods_get_405_with_allow() {
        let s = state();
        for m in [Method::POST, Method::DELETE, Method::PUT, Method::OPTIONS] {
            let r = respond(&req(m.clone(), "/healthz"), &s);
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
            assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        }
        let r = respond(&req(Method::POST, "/nowhere"), &s);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(!r.headers().contains_key(ALLOW));
    }

    #[test]
    fn query_strings_do_not_change_the_route() {
        let s = state();
        for uri in ["/metrics?x=1", "/healthz?", "/healthz?verbose&x=%20"] {
            assert_eq!(
                respond(&req(Method::GET, uri), &s).status(),
                StatusCode::OK,
                "{uri}"
            );
        }
        assert_eq!(
            respond(&req(Method::GET, "/healthz/"), &s).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn before_the_node_is_up_readyz_and_status_say_why() {
        let s = state();
        s.set_phase("waiting for etcd");
        assert_eq!(
            respond(&req(Method::GET, "/healthz"), &s).status(),
            StatusCode::OK
        );
        for path in ["/readyz", "/status"] {
            let r = respond(&req(Method::GET, path), &s);
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(body(r).await, "starting: waiting for etcd\n", "{path}");
        }
    }

    #[test]
    fn counters_can_be_pointed_at_later() {
        let s = state();
        let c = Arc::new(crate::dataplane::Counters::default());
        c.tx_packets.store(42, std::sync::atomic::Ordering::Relaxed);
        s.set_counters(c);
        let r = route(&Method::GET, "/metrics", &s);
        assert_eq!(
            crate::ops::metrics::sample(&r.body, "weft_packets_total{direction=\"tx\"}"),
            Some(42)
        );
    }

    #[test]
    fn accept_errors_are_logged_once_per_period_with_a_count() {
        let mut e = AcceptErrors::default();
        let t0 = Instant::now();
        let (log, pause) = e.failed(t0);
        assert_eq!(log, Some(0));
        assert_eq!(pause, ACCEPT_BACKOFF.0);
        let mut last = pause;
        for i in 1..=20u64 {
            let (log, pause) = e.failed(t0 + Duration::from_millis(100 * i));
            assert_eq!(log, None);
            assert!(pause >= last && pause <= ACCEPT_BACKOFF.1);
            last = pause;
        }
        assert_eq!(last, ACCEPT_BACKOFF.1, "backs off to a second");
        let (log, _) = e.failed(t0 + ACCEPT_LOG_EVERY);
        assert_eq!(log, Some(20), "the next line counts what was not logged");
        e.succeeded();
        let (log, pause) = e.failed(t0 + ACCEPT_LOG_EVERY + Duration::from_millis(1));
        assert_eq!(log, None);
        assert_eq!(pause, ACCEPT_BACKOFF.0, "a success resets the back-off");
    }

    /// Sends `parts` to `addr` (pausing between them), half-closes, reads to EOF.
    async fn exchange(addr: SocketAddr, parts: &[&[u8]]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c.write_all(p).await.unwrap();
        }
        c.shutdown().await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_split_and_half_closed_requests_on_loopback() {
        let server = spawn("127.0.0.1:0".parse().unwrap(), state())
            .await
            .unwrap();
        let addr = server.local_addr();
        let r = exchange(addr, &[b"GE", b"T /healthz HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nweft is running\n"), "{r}");
        let r = exchange(addr, &[b"HEAD /readyz HTTP/1.0\r\n\r\n"]).await;
        assert!(r.starts_with("HTTP/1.0 503"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "no body: {r}");
        let big = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES)
        );
        let r = exchange(addr, &[big.as_bytes()]).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    }

    #[tokio::test]
    async fn at_the_limit_the_oldest_waiting_connection_makes_room() {
        let slots = Arc::new(Slots::new(2));
        let a = slots.admit().await;
        let b = slots.admit().await;
        b.head_received();
        assert_eq!(slots.open(), 2);
        // Full: `a` still waits for its head, so it is told to go.
        let admit = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit().await }
        });
        tokio::time::timeout(Duration::from_secs(1), a.evicted())
            .await
            .expect("the waiting connection is evicted");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), admit)
            .await
            .expect("admitted once the evicted slot is free")
            .unwrap();
        assert_eq!(slots.open(), 2);
        // Both busy answering: nobody to evict, the next one waits for a slot.
        c.head_received();
        let admit = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!admit.is_finished(), "no busy connection is evicted");
        drop(b);
        let _d = tokio::time::timeout(Duration::from_secs(1), admit)
            .await
            .expect("admitted when a busy one finishes")
            .unwrap();
        assert_eq!(slots.open(), 2);
        drop(c);
        assert_eq!(slots.open(), 1);
    }
}
