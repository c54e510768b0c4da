//! `hemostat-responder`: parse config, start the agent base, run the responder (or a one-off
//! command), exit meaningfully.

use std::process::ExitCode;
use std::sync::Arc;

use hemostat_common::agent;
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::Bus;
use hemostat_common::docker;
use hemostat_common::http::Health;
use hemostat_common::shutdown::Shutdown;
use hemostat_responder::config::{Command, ResponderArgs, ResponderConfig};

fn main() -> ExitCode {
    agent::main(
        "hemostat-responder",
        |a: &ResponderArgs| &a.common,
        ResponderArgs::validate,
        async |args, cfg, shutdown| match args.command.clone() {
            Some(Command::ResetBreaker { container }) => {
                reset(&args, &container, &shutdown).await.map(|()| true)
            }
            None => {
                if cfg.dry_run {
                    tracing::warn!(
                        "DRY RUN: decisions are made and reported, but no Docker write happens"
                    );
                }
                run(args, cfg, shutdown).await
            }
        },
    )
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
    let bus = Bus::for_command(&args.common, shutdown).await?;
    let n = hemostat_responder::reset_breaker(&bus, &host, container).await?;
    println!("circuit breaker of {container} on {host} reset ({n} key(s) removed)");
    Ok(())
}
