//! `hemostat-analyzer`: parse config, start the agent base, run the analyzer, exit meaningfully.

use std::process::ExitCode;
use std::sync::Arc;

use hemostat_analyzer::config::{AnalyzerArgs, AnalyzerConfig};
use hemostat_common::agent::AgentContext;
use hemostat_common::http::Health;
use hemostat_common::shutdown::Shutdown;
use hemostat_common::{config, docker, telemetry};

fn main() -> ExitCode {
    // For container health checks (no curl in a scratch image).
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return hemostat_common::http::healthcheck_main();
    }
    let args = match config::parse::<AnalyzerArgs>() {
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
        tracing::info!(config = %args.common.summary(),
            llm = cfg.llm.as_ref().map(|l| format!("{} at {}", l.model, l.base_url)).unwrap_or_else(|| "off (rules only)".into()),
            threshold = cfg.confidence_threshold, "hemostat-analyzer starting");
        match run(args, cfg, shutdown.clone()).await {
            Ok(clean) => ExitCode::from(if clean { shutdown.exit_code() as u8 } else { 1 }),
            Err(e) if shutdown.is_cancelled() => {
                tracing::info!(reason = format!("{e:#}"), "stopped during start-up");
                ExitCode::from(shutdown.exit_code() as u8)
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "analyzer failed");
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    })
}

async fn run(args: AnalyzerArgs, cfg: AnalyzerConfig, shutdown: Shutdown) -> anyhow::Result<bool> {
    let docker =
        docker::connect_docker(args.docker_host.as_deref(), &Health::default(), &shutdown).await?;
    let host = match args.common.host_id() {
        Some(h) => h.to_owned(),
        None => docker
            .info()
            .await?
            .name
            .unwrap_or_else(|| "unknown".into()),
    };
    let ctx = AgentContext::start(&args.common, hemostat_analyzer::AGENT, host, shutdown).await?;
    let analyzer =
        hemostat_analyzer::Analyzer::new(cfg, docker, ctx.bus.clone(), hemostat_analyzer::AGENT)?;
    hemostat_analyzer::spawn(Arc::new(analyzer), &ctx);
    Ok(ctx.finish().await)
}
