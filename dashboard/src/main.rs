//! `hemostat-dashboard`: the agent base's `main` (heartbeat, `/healthz` and `/metrics` on
//! `HEMOSTAT_LISTEN`, `healthcheck` for containers) around the dashboard, which serves the UI,
//! the JSON API and the live feed on `HEMOSTAT_DASHBOARD_LISTEN`.

use hemostat_common::agent::{self, AgentContext};
use hemostat_dashboard::config::DashboardArgs;

fn main() -> std::process::ExitCode {
    agent::main(
        "hemostat-dashboard",
        |a: &DashboardArgs| &a.common,
        DashboardArgs::validate,
        async |args, cfg, shutdown| {
            // The dashboard never talks to Docker, so its host id cannot come from `docker info`.
            let host = args
                .common
                .host_id()
                .unwrap_or(hemostat_dashboard::AGENT)
                .to_owned();
            // The token is only ever said to be set or not.
            tracing::info!(
                listen = %cfg.listen,
                actions = if cfg.token.is_some() { "enabled (token set)" } else { "disabled (read-only)" },
                "dashboard settings"
            );
            let ctx = AgentContext::start(&args.common, hemostat_dashboard::AGENT, host, shutdown)
                .await?;
            let addr = hemostat_dashboard::start(cfg, args.common.stream_maxlen, &ctx).await?;
            tracing::info!(%addr, "serving the dashboard");
            Ok(ctx.finish().await)
        },
    )
}
