//! `hemostat-monitor`: the agent base's `main` around the monitor.

use hemostat_common::agent::{self, AgentContext};
use hemostat_common::http::Health;
use hemostat_monitor::config::MonitorArgs;

fn main() -> std::process::ExitCode {
    // A one-off question to a host's monitor, not the agent itself.
    if std::env::args().nth(1).as_deref() == Some("ask") {
        return hemostat_monitor::ask_cli::main();
    }
    agent::main(
        "hemostat-monitor",
        |a: &MonitorArgs| &a.common,
        MonitorArgs::validate,
        async |args, cfg, shutdown| {
            tracing::info!(?cfg, "monitor settings");
            let docker = hemostat_monitor::connect_docker(
                args.docker_host.as_deref(),
                &Health::default(),
                &shutdown,
            )
            .await?;
            let host = hemostat_monitor::host_id(&docker, args.common.host_id()).await?;
            let ctx =
                AgentContext::start(&args.common, hemostat_monitor::AGENT, host, shutdown).await?;
            ctx.metrics.docker_up.set(1);
            hemostat_monitor::spawn(cfg, docker, &ctx);
            Ok(ctx.finish().await)
        },
    )
}
