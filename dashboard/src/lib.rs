//! hemostat-dashboard: the fleet healing itself, live in a browser.
//!
//! One axum server, reading Redis only (it never talks to Docker): a page embedded in the
//! binary ([`api`]'s `/`), a JSON API under `/api` built from bounded stream reads
//! ([`store`]) and pure aggregation ([`model`]), a live feed over server-sent events fed by one
//! Redis subscription ([`live`]), and three audited actions behind a bearer token ([`auth`]).

pub mod actions;
pub mod api;
pub mod auth;
pub mod config;
pub mod hosts;
pub mod live;
pub mod model;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use hemostat_common::agent::AgentContext;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::DashboardConfig;

/// The service's name on the bus (heartbeats) and in `/healthz`.
pub const AGENT: &str = "dashboard";

/// Binds `cfg.listen`, starts the live feed, and serves the dashboard on `ctx.tracker` until
/// shutdown. Returns the bound address (useful with port 0).
pub async fn start(
    cfg: DashboardConfig,
    stream_maxlen: u64,
    ctx: &AgentContext,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on HEMOSTAT_DASHBOARD_LISTEN={}", cfg.listen))?;
    let addr = listener.local_addr()?;

    let viewers = Gauge::default();
    let actions = Family::default();
    ctx.registry.with(|r| {
        r.register(
            "hemostat_dashboard_live_viewers",
            "Browsers connected to the live feed",
            viewers.clone(),
        );
        r.register(
            "hemostat_dashboard_actions",
            "Actions asked for, by result (ok, read_only, unauthorized, not_found, not_audited)",
            actions.clone(),
        );
    });
    let live = live::Live::start(
        &ctx.bus,
        &ctx.metrics,
        &ctx.health,
        viewers,
        &ctx.shutdown,
        &ctx.tracker,
    );
    let state = Arc::new(api::Inner {
        bus: ctx.bus.clone(),
        live,
        health: ctx.health.clone(),
        registry: ctx.registry.clone(),
        actions,
        stream_maxlen,
        cfg,
    });
    let app = api::router(state);
    let shutdown = ctx.shutdown.clone();
    ctx.spawn_critical("dashboard listener", async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "dashboard listener failed");
        }
    });
    Ok(addr)
}
