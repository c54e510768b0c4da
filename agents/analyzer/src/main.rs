//! `hemostat-analyzer`: the agent base's `main` around the analyzer. It connects to Redis only:
//! the analyzer reads no Docker engine.

use std::sync::Arc;

use hemostat_analyzer::config::AnalyzerArgs;
use hemostat_common::agent::{self, AgentContext};

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
            // Its own envelopes (heartbeats) name where it runs; verdicts name the alert's host.
            let host = args
                .common
                .host_id()
                .map(str::to_owned)
                .unwrap_or_else(hemostat_common::agent::machine_name);
            let ctx =
                AgentContext::start(&args.common, hemostat_analyzer::AGENT, host, shutdown).await?;
            let analyzer =
                hemostat_analyzer::Analyzer::new(cfg, ctx.bus.clone(), hemostat_analyzer::AGENT)?;
            hemostat_analyzer::spawn(Arc::new(analyzer), &ctx);
            Ok(ctx.finish().await)
        },
    )
}
