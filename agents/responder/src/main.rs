//! `hemostat-responder`: parse config, start the agent base, run the responder (or a one-off
//! command), exit meaningfully.

use std::process::ExitCode;
use std::sync::Arc;

use hemostat_common::agent::AgentContext;
use hemostat_common::bus::Bus;
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::shutdown::Shutdown;
use hemostat_common::{config, docker, telemetry};
use hemostat_responder::config::{Command, ResponderArgs, ResponderConfig};

fn main() -> ExitCode {
    // For container health checks (no curl in a scratch image).
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return hemostat_common::http::healthcheck_main();
    }
    let args = match config::parse::<ResponderArgs>() {
        Ok(a) => a,
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
        let result = match &args.command {
            Some(Command::ResetBreaker { container }) => reset(&args, container, &shutdown).await.map(|()| true),
            None => {
                tracing::info!(config = %args.common.summary(), dry_run = cfg.dry_run, "hemostat-responder starting");
                if cfg.dry_run {
                    tracing::warn!("DRY RUN: decisions are made and reported, but no Docker write happens");
                }
                run(args.clone(), cfg, shutdown.clone()).await
            }
        };
        match result {
            Ok(clean) => ExitCode::from(if clean { shutdown.exit_code() as u8 } else { 1 }),
            Err(e) if shutdown.is_cancelled() => {
                tracing::info!(reason = format!("{e:#}"), "stopped during start-up");
                ExitCode::from(shutdown.exit_code() as u8)
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "responder failed");
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    })
}

async fn host_id(args: &ResponderArgs, d: &bollard::Docker) -> anyhow::Result<String> {
    match args.common.host_id() {
        Some(h) => Ok(h.to_owned()),
        None => Ok(d.info().await?.name.unwrap_or_else(|| "unknown".into())),
    }
}

async fn run(
    args: ResponderArgs,
    cfg: ResponderConfig,
    shutdown: Shutdown,
) -> anyhow::Result<bool> {
    let d =
        docker::connect_docker(args.docker_host.as_deref(), &Health::default(), &shutdown).await?;
    let host = host_id(&args, &d).await?;
    let ctx = AgentContext::start(
        &args.common,
        hemostat_responder::AGENT,
        host.clone(),
        shutdown.clone(),
    )
    .await?;
    ctx.metrics.docker_up.set(1);
    let responder = hemostat_responder::Responder::new(
        cfg,
        d,
        ctx.bus.clone(),
        &host,
        &ctx.identity.instance,
        shutdown,
    );
    hemostat_responder::spawn(Arc::new(responder), &ctx);
    Ok(ctx.finish().await)
}

async fn reset(args: &ResponderArgs, container: &str, shutdown: &Shutdown) -> anyhow::Result<()> {
    let d =
        docker::connect_docker(args.docker_host.as_deref(), &Health::default(), shutdown).await?;
    let host = host_id(args, &d).await?;
    let bus = Bus::connect(
        &args.common.redis_url,
        args.common.stream_maxlen,
        AgentMetrics::default(),
        Health::default(),
        shutdown,
    )
    .await?;
    let n = hemostat_responder::reset_breaker(&bus, &host, container).await?;
    println!("circuit breaker of {container} on {host} reset ({n} key(s) removed)");
    Ok(())
}
