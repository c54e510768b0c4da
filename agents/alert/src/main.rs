//! `hemostat-alert`: the notification service, or one-off commands (`test`, `silence`).

use std::process::ExitCode;
use std::sync::Arc;

use chrono::Utc;
use hemostat_alert::config::{AlertArgs, AlertConfig, Command, MaintenanceCommand, SilenceCommand};
use hemostat_alert::engine::{Batch, Silence};
use hemostat_alert::notify::{Notification, Status};
use hemostat_alert::render::RenderContext;
use hemostat_alert::sink::{Delivered, Sink};
use hemostat_alert::{AlertService, add_silence, expire_silence, load_silences};
use hemostat_common::agent;
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::Bus;
use hemostat_common::events::Severity;
use hemostat_common::shutdown::Shutdown;

fn main() -> ExitCode {
    agent::main(
        "hemostat-alert",
        |a: &AlertArgs| &a.common,
        AlertArgs::validate,
        async |args, cfg, shutdown| match args.command.clone() {
            Some(Command::Test) => test(cfg).await,
            Some(Command::Silence(cmd)) => silence(&args, cmd, &shutdown).await.map(|()| true),
            Some(Command::Maintenance(cmd)) => {
                maintenance(&args, cmd, &shutdown).await.map(|()| true)
            }
            None => run(&args, cfg, shutdown).await,
        },
    )
}

async fn run(args: &AlertArgs, cfg: AlertConfig, shutdown: Shutdown) -> anyhow::Result<bool> {
    let host = args.common.host_id().unwrap_or("alert").to_owned();
    let names: Vec<_> = cfg.sinks.iter().map(|s| s.name.clone()).collect();
    tracing::info!(config = %args.common.summary(), sinks = ?names, "hemostat-alert starting");
    if names.is_empty() {
        tracing::warn!(
            "no sink configured (HEMOSTAT_NOTIFY_URLS, HEMOSTAT_NOTIFY_ROUTES, SLACK_WEBHOOK_URL, WEBHOOK_URL, PAGERDUTY_ROUTING_KEY): decisions are only recorded"
        );
    }
    let ctx = AgentContext::start(&args.common, hemostat_alert::AGENT, host, shutdown).await?;
    let svc = Arc::new(AlertService::new(cfg, ctx.bus.clone()));
    let sinks = svc.sinks()?;
    hemostat_alert::spawn(svc, sinks, &ctx);
    Ok(ctx.finish().await)
}

/// Sends one test notification to every sink and says what each did; false if any failed.
async fn test(cfg: AlertConfig) -> anyhow::Result<bool> {
    if cfg.sinks.is_empty() {
        println!(
            "no sink configured: set HEMOSTAT_NOTIFY_URLS (or SLACK_WEBHOOK_URL, WEBHOOK_URL, PAGERDUTY_ROUTING_KEY)"
        );
        return Ok(false);
    }
    let render = RenderContext {
        dashboard_url: cfg.dashboard_url.clone(),
        approval_key: None,
    };
    let n = Notification {
        fingerprint: "test/-/test".into(),
        status: Status::Firing,
        severity: Severity::Critical,
        host: "test".into(),
        container: None,
        kind: "test".into(),
        title: "hemostat test notification".into(),
        text: "If you can read this, hemostat can reach you.".into(),
        root_cause: None,
        action: None,
        outcome: None,
        confidence: None,
        method: None,
        dry_run: false,
        at: Utc::now(),
        event_id: "test".into(),
        event_type: "test".into(),
        page: true,
        one_off: true,
        proposal: None,
    };
    let batch = Batch {
        notifications: vec![n],
    };
    let mut failed = false;
    for s in &cfg.sinks {
        let sink = Sink::new(
            &s.name,
            s.kind.clone(),
            s.min_severity,
            &s.route,
            cfg.delivery,
        )?;
        let what = format!(
            "{} ({}, route {})",
            sink.name,
            sink.kind.label(),
            sink.route
        );
        match sink.deliver(&batch, &render).await {
            Delivered::Sent { attempts, status } => {
                let code = if matches!(sink.kind, hemostat_alert::sink::Kind::Email(_)) {
                    format!("SMTP {status}")
                } else {
                    format!("HTTP {status}")
                };
                println!("{what}: sent ({code}, {attempts} attempt(s))")
            }
            Delivered::NotForThisSink => {
                println!("{what}: skipped (below its minimum severity)")
            }
            Delivered::Failed { attempts, reason } => {
                failed = true;
                println!("{what}: FAILED after {attempts} attempt(s): {reason}");
            }
        }
    }
    Ok(!failed)
}

async fn maintenance(
    args: &AlertArgs,
    cmd: MaintenanceCommand,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    use hemostat_common::windows;
    let bus = Bus::for_command(&args.common, shutdown).await?;
    let who = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let now = Utc::now();
    match cmd {
        MaintenanceCommand::Add(spec) => {
            let w = (*spec)
                .into_window(now, &who)
                .map_err(|e| anyhow::anyhow!("not a valid maintenance window: {e}"))?;
            windows::add(&bus, &w).await?;
            println!("maintenance window added: {}", windows::describe(&w, now));
        }
        MaintenanceCommand::List => {
            let list = windows::load(&bus).await?;
            if list.is_empty() {
                println!("no maintenance windows");
            }
            for w in list {
                println!("{}", windows::describe(&w, now));
            }
        }
        MaintenanceCommand::End { id } => {
            if windows::end(&bus, &id, &who).await? {
                println!("maintenance window {id} ended");
            } else {
                anyhow::bail!("no maintenance window {id}");
            }
        }
    }
    Ok(())
}

async fn silence(args: &AlertArgs, cmd: SilenceCommand, shutdown: &Shutdown) -> anyhow::Result<()> {
    let bus = Bus::for_command(&args.common, shutdown).await?;
    let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    match cmd {
        SilenceCommand::Add {
            host,
            container,
            kind,
            duration,
            comment,
        } => {
            let now = Utc::now();
            let s = Silence {
                id: ulid::Ulid::new().to_string(),
                host,
                container,
                kind,
                expires_at: now + chrono::Duration::from_std(duration)?,
                comment,
                created_by: who,
                created_at: now,
            };
            add_silence(&bus, &s).await?;
            println!("silence {} added until {}", s.id, s.expires_at.to_rfc3339());
        }
        SilenceCommand::List => {
            let list = load_silences(&bus).await?;
            if list.is_empty() {
                println!("no active silences");
            }
            for s in list {
                println!(
                    "{}  host={} container={} kind={}  until {}  by {}  {}",
                    s.id,
                    s.host.as_deref().unwrap_or("*"),
                    s.container.as_deref().unwrap_or("*"),
                    s.kind.as_deref().unwrap_or("*"),
                    s.expires_at.to_rfc3339(),
                    s.created_by,
                    s.comment
                );
            }
        }
        SilenceCommand::Expire { id } => {
            if expire_silence(&bus, &id, &who).await? {
                println!("silence {id} expired");
            } else {
                anyhow::bail!("no silence {id}");
            }
        }
    }
    Ok(())
}
