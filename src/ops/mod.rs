//! Operations endpoints: what an operator, Prometheus or kubelet asks the node. Reads state,
//! changes nothing. Served on `--healthz-ip:--healthz-port`: `/healthz` (alive, as flanneld),
//! `/readyz` (ready to carry traffic, 503 with the reasons otherwise), `/metrics`
//! (Prometheus text format) and `/status` (JSON for `weft status`), by [`server`] (hyper,
//! HTTP/1.1) from before the node reads its config, so `/healthz` answers while etcd is out of
//! reach. Also systemd's readiness notification, and the clients `weft status` asks with
//! ([`client`] over the ops port, [`local`] over the instance socket).

pub mod client;
pub mod local;
pub mod metrics;
pub mod server;
pub mod status;

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::{Method, StatusCode};
use tracing::warn;

use crate::dataplane::Counters;
use crate::table::SharedTable;

pub use server::{bind, serve, spawn, OpsServer};
pub use status::NodeStatus;

/// What the endpoints read. The node creates it before anything else, so the endpoints answer
/// from the first moment, and fills it in as it comes up: the counters once the data path
/// runs, the status once a second after the lease is held.
#[derive(Debug, Clone)]
pub struct OpsState {
    /// The data path's counters (all zero until the data path starts).
    pub counters: Arc<ArcSwap<Counters>>,
    /// The published lease table.
    pub table: SharedTable,
    /// The node's latest status, `None` until the node is up.
    pub status: Arc<ArcSwapOption<NodeStatus>>,
    /// What the node is doing while `status` is `None` (why it is not ready).
    pub phase: Arc<ArcSwap<String>>,
    /// Where takeover requests go while the node can hand over (`None`: it cannot now).
    pub takeover: Arc<Mutex<Option<TakeoverRequests>>>,
}

/// systemd's notification socket: `NOTIFY_SOCKET`, else the one a takeover inherited from
/// the process it took over from ([`inherit_notify_socket`]).
pub fn notify_socket() -> Option<std::ffi::OsString> {
    std::env::var_os("NOTIFY_SOCKET")
        .or_else(|| INHERITED_NOTIFY.get().map(std::ffi::OsString::from))
}

/// The notification socket a takeover inherited.
static INHERITED_NOTIFY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Uses `path` as systemd's notification socket when this process was given none (a process
/// started by `systemctl reload` to take over from the service's main process).
pub fn inherit_notify_socket(path: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        let _ = INHERITED_NOTIFY.set(path.to_string());
    }
}

/// The environment variable that marks a node started by `weft run --detach`: it says
/// [`READY_LINE`] on its standard output (a pipe to the parent) once it forwards.
pub const DETACHED_ENV: &str = "WEFT_DETACHED";

/// What a detached node writes to its parent when it forwards.
pub const READY_LINE: &str = "weft: forwarding";

/// Tells the `weft run --detach` parent, if this node has one, that it forwards.
pub fn tell_detached_parent() {
    if std::env::var_os(DETACHED_ENV).is_some() {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{READY_LINE}");
        let _ = out.flush();
    }
}

/// The node's queue of takeover requests (connections on its instance socket).
pub type TakeoverRequests = tokio::sync::mpsc::Sender<std::os::unix::net::UnixStream>;

impl OpsState {
    /// State for a node that is starting: no status, zero counters, `table` as published.
    pub fn new(table: SharedTable) -> OpsState {
        OpsState {
            counters: Arc::new(ArcSwap::from_pointee(Counters::default())),
            table,
            status: Arc::new(ArcSwapOption::empty()),
            phase: Arc::new(ArcSwap::from_pointee("starting".to_string())),
            takeover: Arc::default(),
        }
    }

    /// Says what the node does while it is not up; /readyz and /status report it.
    pub fn set_phase(&self, phase: &str) {
        self.phase.store(Arc::new(phase.to_string()));
    }

    /// Points the endpoints at the data path's counters.
    pub fn set_counters(&self, counters: Arc<Counters>) {
        self.counters.store(counters);
    }
}

/// One answer of the endpoints, before HTTP framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The Content-Type.
    pub content_type: &'static str,
    /// The body (a HEAD answer announces its length and sends none).
    pub body: String,
}

impl Reply {
    fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The methods every endpoint serves (the `Allow` header of a 405).
pub const ALLOWED_METHODS: &str = "GET, HEAD";

/// The endpoints this server knows.
const ENDPOINTS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/status"];

/// Answers `method path` (the path without its query string) from `state`. HEAD gets GET's
/// answer (the server drops the body); other methods on a known path get 405.
pub fn route(method: &Method, path: &str, state: &OpsState) -> Reply {
    if !ENDPOINTS.contains(&path) {
        return Reply::text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        return Reply::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed; use {ALLOWED_METHODS}\n"),
        );
    }
    let status = state.status.load_full();
    let starting = || format!("starting: {}\n", state.phase.load());
    match path {
        "/healthz" => Reply::text(StatusCode::OK, "weft is running\n"),
        "/readyz" => match status.as_deref().map(NodeStatus::not_ready) {
            Some(reasons) if reasons.is_empty() => Reply::text(StatusCode::OK, "ready\n"),
            Some(reasons) => {
                Reply::text(StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n") + "\n")
            }
            None => Reply::text(StatusCode::SERVICE_UNAVAILABLE, starting()),
        },
        "/metrics" => Reply {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics::render(
                &state.counters.load(),
                &state.table.load_full(),
                status.as_deref(),
            ),
        },
        "/status" => match status.as_deref() {
            Some(s) => Reply {
                status: StatusCode::OK,
                content_type: "application/json",
                body: s.to_json(&state.table.load_full(), &state.counters.load()),
            },
            None => Reply::text(StatusCode::SERVICE_UNAVAILABLE, starting()),
        },
        _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Tells systemd (Type=notify) about the service's state, when `NOTIFY_SOCKET` is set:
/// `READY=1` once ready, `STOPPING=1` on the way out. Errors are logged, never fatal.
pub fn sd_notify(state: &str) {
    let Some(path) = notify_socket() else {
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
