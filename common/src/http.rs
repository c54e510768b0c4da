//! The small HTTP listener every agent has: `/healthz` (liveness and degraded reasons) and
//! `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::SharedRegistry;
use crate::shutdown::Shutdown;

/// Why an agent is degraded, keyed by the component (`redis`, `docker`, `events`).
/// Shared by `/healthz`, the heartbeat and the agent's own loops.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<RwLock<BTreeMap<String, String>>>);

impl Health {
    /// Marks `component` degraded with `reason` (replacing an earlier reason).
    pub fn degraded(&self, component: &str, reason: impl Into<String>) {
        let reason = reason.into();
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if map.get(component) != Some(&reason) {
            tracing::warn!(component, reason = %reason, "degraded");
            map.insert(component.to_owned(), reason);
        }
    }

    /// Marks `component` healthy again.
    pub fn ok(&self, component: &str) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if map.remove(component).is_some() {
            tracing::info!(component, "recovered");
        }
    }

    /// `component: reason` lines, empty when healthy.
    pub fn reasons(&self) -> Vec<String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| format!("{k}: {v}")).collect()
    }
}

/// Panics since the process started (every thread, caught or not), and the last one.
static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Counts every panic of the process for `/healthz` (`panics`, `last_panic`), then reports it
/// as Rust does. A panic in one of an agent's loops also stops the agent
/// (`AgentContext::spawn_critical`); one in a handler dead-letters its entry
/// (`bus::consume`); either way it is visible here.
pub fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(at = %at, panic = %msg, "panicked");
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{at}: {msg}"));
        default(info);
    }));
}

#[derive(Clone)]
struct AppState {
    agent: String,
    health: Health,
    registry: Arc<SharedRegistry>,
}

/// Binds `addr` now (so a taken port fails start-up) and returns the bound address and the
/// server future, which ends when `shutdown` is cancelled.
pub async fn bind(
    addr: SocketAddr,
    agent: &str,
    health: Health,
    registry: Arc<SharedRegistry>,
    shutdown: Shutdown,
) -> std::io::Result<(
    SocketAddr,
    impl Future<Output = std::io::Result<()>> + use<>,
)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            agent: agent.to_owned(),
            health,
            registry,
        });
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    };
    Ok((local, server))
}

/// 200 when healthy, 503 with the reasons when degraded (Redis or Docker unreachable): a
/// container health check then shows the agent cannot do its job.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let reasons = state.health.reasons();
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "agent": state.agent,
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "degraded": reasons,
        "version": env!("CARGO_PKG_VERSION"),
        "panics": PANICS.load(std::sync::atomic::Ordering::SeqCst),
        "last_panic": LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    });
    (status, axum::Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.registry.encode(),
    )
}

/// Why `/healthz` could not be served, with what to do about it: a port already taken is
/// nearly always another agent (or a second copy of this one) started on the same machine.
pub fn bind_error(e: std::io::Error, addr: SocketAddr, configured: bool) -> anyhow::Error {
    let set = if configured {
        format!("HEMOSTAT_LISTEN={addr}")
    } else {
        format!("{addr}, this agent's default")
    };
    if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot serve /healthz and /metrics on {set}: port {} is in use by another program \
             (another hemostat agent, or a second copy of this one?). Give this one a free port \
             with HEMOSTAT_LISTEN (or --listen), e.g. HEMOSTAT_LISTEN=127.0.0.1:0 for any free port",
            addr.port()
        )
    } else {
        anyhow::anyhow!("cannot serve /healthz and /metrics on {set}: {e}")
    }
}

/// `hemostat-<agent> healthcheck`: a container health check for images without curl. GETs
/// `/healthz` from the agent's own listener (`HEMOSTAT_LISTEN`, else the agent's own port, see
/// [`crate::config::default_port`]) on loopback, with a 3 s timeout, and exits 0 only on
/// HTTP 200.
pub fn healthcheck_main(agent: &str) -> std::process::ExitCode {
    use std::io::{Read, Write};
    let port = std::env::var("HEMOSTAT_LISTEN")
        .ok()
        .and_then(|l| l.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or_else(|| crate::config::default_port(agent));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = std::time::Duration::from_secs(3);
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match result {
        Ok(reply) if reply.starts_with("HTTP/1.1 200") => std::process::ExitCode::SUCCESS,
        Ok(reply) => {
            eprintln!("{}", reply.lines().last().unwrap_or_default());
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("healthcheck: {addr}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
