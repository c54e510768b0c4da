//! `hemostat-monitor`: parse config, start the agent base, run the monitor, exit meaningfully.

use std::process::ExitCode;

use hemostat_common::agent::AgentContext;
use hemostat_common::http::Health;
use hemostat_common::shutdown::Shutdown;
use hemostat_common::{config, telemetry};
use hemostat_monitor::config::MonitorArgs;

fn main() -> ExitCode {
    // For container health checks (no curl in a scratch image).
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return hemostat_common::http::healthcheck_main();
    }
    let args = match config::parse::<MonitorArgs>() {
        Ok(a) => a,
        // Prints the message (naming the variable) and exits 2; --help and --version exit 0.
        Err(e) => e.exit(),
    };
    telemetry::init(args.common.log_format);
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let shutdown = match Shutdown::on_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(config = %args.common.summary(), ?cfg, "hemostat-monitor starting");
        match run(args, cfg, shutdown.clone()).await {
            Ok(clean) => ExitCode::from(if clean { shutdown.exit_code() as u8 } else { 1 }),
            Err(e) if shutdown.is_cancelled() => {
                tracing::info!(reason = format!("{e:#}"), "stopped during start-up");
                ExitCode::from(shutdown.exit_code() as u8)
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "monitor failed");
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    })
}

async fn run(
    args: MonitorArgs,
    cfg: hemostat_monitor::config::MonitorConfig,
    shutdown: Shutdown,
) -> anyhow::Result<bool> {
    let docker_health = Health::default();
    let docker =
        hemostat_monitor::connect_docker(args.docker_host.as_deref(), &docker_health, &shutdown)
            .await?;
    let host = hemostat_monitor::host_id(&docker, args.common.host_id()).await?;
    let ctx = AgentContext::start(&args.common, hemostat_monitor::AGENT, host, shutdown).await?;
    ctx.metrics.docker_up.set(1);
    hemostat_monitor::spawn(cfg, docker, &ctx);
    Ok(ctx.finish().await)
}
