//! `hemostat-analyzer`: the agent base's `main` around the analyzer.

use std::sync::Arc;

use hemostat_analyzer::config::AnalyzerArgs;
use hemostat_common::agent::{self, AgentContext};
use hemostat_common::docker;
use hemostat_common::http::Health;

fn main() -> std::process::ExitCode {
    agent::main(
        "hemostat-analyzer",
        |a: &AnalyzerArgs| &a.common,
        AnalyzerArgs::validate,
        async |args, cfg, shutdown| {
            let llm = cfg
                .llm
                .as_ref()
                .map(|l| format!("{} at {}", l.model, l.base_url));
            tracing::info!(
                llm = llm.as_deref().unwrap_or("off (rules only)"),
                threshold = cfg.confidence_threshold,
                "analyzer settings"
            );
            let d =
                docker::connect_docker(args.docker_host.as_deref(), &Health::default(), &shutdown)
                    .await?;
            let host = match args.common.host_id() {
                Some(h) => h.to_owned(),
                None => d.info().await?.name.unwrap_or_else(|| "unknown".into()),
            };
            let ctx =
                AgentContext::start(&args.common, hemostat_analyzer::AGENT, host, shutdown).await?;
            let analyzer = hemostat_analyzer::Analyzer::new(
                cfg,
                d,
                ctx.bus.clone(),
                hemostat_analyzer::AGENT,
            )?;
            hemostat_analyzer::spawn(Arc::new(analyzer), &ctx);
            Ok(ctx.finish().await)
        },
    )
}
