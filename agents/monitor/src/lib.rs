//! hemostat-monitor: watches Docker containers and the host and publishes what goes wrong.
//!
//! Three loops run side by side, each owning its own state:
//! - [`watch_events`]: Docker's event stream → [`detect::Detector`] → `health_alert`, at once;
//!   at start-up, also the deaths that happened while no monitor was running ([`startup`]).
//! - [`watch_stats`]: one-shot stats for every watched container, concurrently → samples on
//!   `hemostat:metrics`, thresholds and baselines ([`judge`]) → `health_alert` on transitions.
//! - [`watch_host`]: host CPU, memory, disk and Docker's disk use → samples and host alerts.
//!
//! Architecture invariant: the monitor only reads from Docker; it never changes a container.

pub mod answer;
pub mod ask_cli;
pub mod config;
pub mod detect;
pub mod fleet;
pub mod host;
pub mod judge;
pub use hemostat_common::scope;
pub mod startup;
pub mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, StatsOptionsBuilder,
};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::{Backoff, Bus};
pub use hemostat_common::docker::connect_docker;
use hemostat_common::docker::container_state;
use hemostat_common::events::{
    AlertKind, Breach, Channel, ContainerAlert, ContainerRef, ContainerSample, ContainerState,
    Detection, DockerDiskUsage, Envelope, HostAlert, HostAlertKind, HostSample, MetricsBatch,
    Payload, Severity,
};
use hemostat_common::http::Health;
use hemostat_common::scope::Scope;
use hemostat_common::shutdown::Shutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::MonitorConfig;
use crate::detect::{Class, Decision, Detector, DockerEvent, Listed};
use crate::judge::{Baseline, Threshold, Transition, Watch};
use crate::startup::{EventHistory, Exit, Reported, Startup, Triage, Verdict};

/// The agent's name on the bus.
pub const AGENT: &str = "monitor";

/// Monitor-specific metrics.
#[derive(Debug, Clone)]
pub struct MonitorMetrics {
    pub docker_events: Counter,
    pub alerts: Counter,
    pub event_stream_reconnects: Counter,
    pub watched_containers: Gauge,
    pub stats_round_seconds: Histogram,
    pub stats_round_overruns: Counter,
    pub stats_errors: Counter,
}

impl MonitorMetrics {
    fn new(ctx: &AgentContext) -> MonitorMetrics {
        let m = MonitorMetrics {
            docker_events: Counter::default(),
            alerts: Counter::default(),
            event_stream_reconnects: Counter::default(),
            watched_containers: Gauge::default(),
            stats_round_seconds: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            stats_round_overruns: Counter::default(),
            stats_errors: Counter::default(),
        };
        ctx.registry.with(|r| {
            r.register(
                "hemostat_monitor_docker_events",
                "Container events received from Docker",
                m.docker_events.clone(),
            );
            r.register(
                "hemostat_monitor_alerts",
                "Health alerts published",
                m.alerts.clone(),
            );
            r.register(
                "hemostat_monitor_event_stream_reconnects",
                "Times the Docker event stream was re-established",
                m.event_stream_reconnects.clone(),
            );
            r.register(
                "hemostat_monitor_watched_containers",
                "Running containers in scope at the last stats round",
                m.watched_containers.clone(),
            );
            r.register(
                "hemostat_monitor_stats_round_seconds",
                "Time to collect one round of stats",
                m.stats_round_seconds.clone(),
            );
            r.register(
                "hemostat_monitor_stats_round_overruns",
                "Stats rounds that took longer than the interval",
                m.stats_round_overruns.clone(),
            );
            r.register(
                "hemostat_monitor_stats_errors",
                "Stats requests that failed",
                m.stats_errors.clone(),
            );
        });
        m
    }
}

/// The host id to use: the configured one, or the Docker engine's name.
pub async fn host_id(docker: &Docker, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let info = docker
        .info()
        .await
        .context("docker info (for the host id)")?;
    info.name
        .filter(|n| !n.is_empty())
        .context("docker info has no name; set HEMOSTAT_HOST_ID")
}

/// Starts the monitor's loops on `ctx.tracker`. They run until `ctx.shutdown`; one that ends
/// or panics before that stops the agent.
pub fn spawn(cfg: MonitorConfig, docker: Docker, ctx: &AgentContext) {
    let cfg = Arc::new(cfg);
    let metrics = MonitorMetrics::new(ctx);
    let fleet = Arc::new(fleet::Fleet::new(&ctx.identity.host));
    ctx.registry.with(|r| fleet.register(r));
    let out = Out {
        fleet,
        agent: ctx.identity.agent.clone(),
        host: ctx.identity.host.clone(),
        outbox: ctx.outbox.clone(),
        metrics: metrics.clone(),
        docker_up: ctx.metrics.docker_up.clone(),
        known: Arc::default(),
        logs: cfg.logs,
    };
    ctx.spawn_critical(
        "watch_events",
        watch_events(
            cfg.clone(),
            docker.clone(),
            out.clone(),
            ctx.bus.clone(),
            ctx.health.clone(),
            ctx.shutdown.clone(),
        ),
    );
    ctx.spawn_critical(
        "watch_stats",
        watch_stats(
            cfg.clone(),
            docker.clone(),
            out.clone(),
            ctx.shutdown.clone(),
        ),
    );
    ctx.spawn_critical(
        "answer_asks",
        answer::answer_forever(
            docker.clone(),
            ctx.bus.clone(),
            ctx.identity.host.clone(),
            ctx.shutdown.clone(),
        ),
    );
    ctx.spawn_critical(
        "watch_host",
        watch_host(cfg, docker, out, ctx.shutdown.clone()),
    );
}

/// Where the loops send what they produce.
#[derive(Clone)]
struct Out {
    agent: String,
    host: String,
    outbox: hemostat_common::bus::Outbox,
    metrics: MonitorMetrics,
    docker_up: Gauge,
    /// The last inspected state of each container, taken while it was alive, so a death can be
    /// reported with its restart count and limits without inspecting the dying container.
    known: Arc<std::sync::Mutex<HashMap<String, ContainerState>>>,
    /// The log tail attached to deaths, OOM kills and failing health checks.
    logs: crate::config::AlertLogs,
    /// The watched containers' series for Prometheus.
    fleet: Arc<fleet::Fleet>,
}

impl Out {
    fn envelope(&self, payload: Payload) -> Envelope {
        Envelope::new(&self.agent, &self.host, payload)
    }

    /// Alerts wait for room in the outbox: they must not be lost.
    async fn alert(&self, payload: Payload) {
        self.metrics.alerts.inc();
        self.outbox.send(self.envelope(payload)).await;
    }

    /// Samples are dropped (and counted) when the outbox is full.
    fn sample(&self, payload: Payload) {
        self.outbox.try_send(self.envelope(payload));
    }

    fn docker_ok(&self, ok: bool) {
        self.docker_up.set(i64::from(ok));
    }

    fn remember(&self, id: &str, state: Option<ContainerState>) {
        if let Some(state) = state {
            self.fleet.restart_count(id, state.restart_count);
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            known.insert(id.to_owned(), state);
        }
    }

    fn forget(&self, id: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.remove(id);
    }

    fn recall(&self, id: &str) -> Option<ContainerState> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(id).cloned()
    }
}

fn nano_to_utc(ns: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
    .single()
}

fn summary(
    name: &str,
    kind: AlertKind,
    class: Class,
    state: Option<&ContainerState>,
    exit: Option<i64>,
) -> String {
    let exit = exit.or_else(|| state.and_then(|s| s.exit_code));
    match (class, kind) {
        (Class::Recovered, AlertKind::Unhealthy) => format!("container {name} is healthy again"),
        (Class::Recovered, AlertKind::CpuHigh) => {
            format!("container {name} CPU is back under its threshold")
        }
        (Class::Recovered, AlertKind::MemoryHigh) => {
            format!("container {name} memory is back under its threshold")
        }
        (Class::Recovered, AlertKind::Anomaly) => {
            format!("container {name} is back within its baseline")
        }
        (Class::Recovered, _) => format!("container {name} is running again"),
        (_, AlertKind::Died) => match exit {
            Some(0) => format!("container {name} exited cleanly (exit code 0)"),
            Some(137) => format!("container {name} was killed (exit code 137, SIGKILL)"),
            Some(c) => format!("container {name} died (exit code {c})"),
            None => format!("container {name} died"),
        },
        (_, AlertKind::OomKilled) => {
            let limit = state
                .and_then(|s| s.memory_limit_bytes)
                .map(|b| format!(" at its {} MiB limit", b / (1024 * 1024)))
                .unwrap_or_default();
            format!("container {name} was killed by the OOM killer{limit}")
        }
        (_, AlertKind::Oom) => format!(
            "a process in container {name} was killed by the OOM killer; the container is still running"
        ),
        (_, AlertKind::Unhealthy) => {
            let out = state
                .and_then(|s| s.health.as_ref())
                .and_then(|h| h.last_output.as_deref())
                .filter(|o| !o.is_empty())
                .map(|o| format!(": {o}"))
                .unwrap_or_default();
            format!("container {name} is failing its health check{out}")
        }
        (_, AlertKind::Stopped) => {
            format!("container {name} was stopped by a person (docker stop)")
        }
        (_, AlertKind::Paused) => format!("container {name} was paused by a person"),
        (_, AlertKind::Unpaused) => format!("container {name} was unpaused"),
        (_, AlertKind::CpuHigh) => format!("container {name} CPU is over its threshold"),
        (_, AlertKind::MemoryHigh) => format!("container {name} memory is over its threshold"),
        (_, AlertKind::Anomaly) => format!("container {name} is far outside its usual behaviour"),
    }
}

fn severity_of(kind: AlertKind, class: Class, exit: Option<i64>) -> Severity {
    match (class, kind) {
        (Class::Recovered | Class::UserAction, _) => Severity::Info,
        (_, AlertKind::Died) if exit == Some(0) => Severity::Info,
        (_, AlertKind::Died | AlertKind::OomKilled | AlertKind::Unhealthy) => Severity::Critical,
        _ => Severity::Warning,
    }
}

/// Inspects the container (for exit code, OOMKilled, restart count, health output) and
/// publishes the alert. A container already removed is reported from the event alone.
async fn publish_decision(docker: Docker, out: Out, d: Decision) {
    // The log tail is read beside the inspect, so it adds no round trip of its own; only a
    // problem whose cause may be in the output gets one.
    let wants_logs = d.class == Class::Problem
        && matches!(
            d.kind,
            AlertKind::Died | AlertKind::OomKilled | AlertKind::Unhealthy
        );
    let logs = async {
        if !wants_logs || out.logs.lines == 0 {
            return None;
        }
        let started = Instant::now();
        let tail = hemostat_common::docker::log_tail(
            &docker,
            &d.container_id,
            out.logs.lines,
            out.logs.bytes,
            out.logs.timeout,
        )
        .await;
        tracing::debug!(container = %d.name, logs_ms = started.elapsed().as_secs_f64() * 1e3, lines = tail.lines.len(), "log tail read");
        Some(tail)
    };
    let (state, logs) = tokio::join!(decision_state(&docker, &out, &d), logs);
    publish_with(out, d, state, logs).await;
}

/// The container's state for the alert: from the event and what was known before for a fresh
/// death, from a fresh inspect otherwise.
async fn decision_state(docker: &Docker, out: &Out, d: &Decision) -> Option<ContainerState> {
    if is_fresh_death(d) {
        // Inspecting a container that has just died waits on Docker's container lock while
        // the engine tears it down: 50-100 ms measured on Engine 20.10, more than the whole
        // detection budget. A death is therefore reported from the event (exit code; OOM from
        // the `oom` event before it) and what was inspected while the container was alive.
        let before = out.recall(&d.container_id).unwrap_or_default();
        Some(ContainerState {
            status: "exited".into(),
            running: false,
            exit_code: d.exit_code,
            oom_killed: d.kind == AlertKind::OomKilled,
            restart_count: before.restart_count,
            started_at: before.started_at,
            finished_at: d
                .event_time_nano
                .and_then(nano_to_utc)
                .map(|t| t.to_rfc3339()),
            error: None,
            health: None,
            memory_limit_bytes: before.memory_limit_bytes,
        })
    } else {
        let started = Instant::now();
        let inspect = docker
            .inspect_container(&d.container_id, None::<InspectContainerOptions>)
            .await;
        tracing::debug!(container = %d.name, inspect_ms = started.elapsed().as_secs_f64() * 1e3, "inspected");
        match &inspect {
            Ok(i) => {
                out.docker_ok(true);
                let state = container_state(i);
                out.remember(&d.container_id, state.clone());
                state
            }
            Err(e) => {
                tracing::debug!(container = %d.name, error = %e, "inspect failed; alerting from the event alone");
                None
            }
        }
    }
}

async fn publish_with(
    out: Out,
    d: Decision,
    state: Option<ContainerState>,
    logs: Option<hemostat_common::events::LogTail>,
) {
    // The kernel's verdict wins: a die with OOMKilled set is an OOM kill even if the `oom`
    // event was missed.
    let mut kind = d.kind;
    if kind == AlertKind::Died
        && d.class == Class::Problem
        && state.as_ref().is_some_and(|s| s.oom_killed)
    {
        kind = AlertKind::OomKilled;
    }
    // A reminder for a problem that is no longer true is not sent.
    if d.reminder
        && let Some(s) = &state
    {
        let still = match kind {
            AlertKind::Died | AlertKind::OomKilled => !s.running,
            AlertKind::Unhealthy => s.health.as_ref().is_some_and(|h| h.status == "unhealthy"),
            _ => true,
        };
        if !still {
            return;
        }
    }
    let labels = &d.attributes;
    let exit = d
        .exit_code
        .or_else(|| state.as_ref().and_then(|s| s.exit_code));
    let alert = ContainerAlert {
        container: ContainerRef {
            id: d.container_id.clone(),
            name: d.name.clone(),
            image: d.image.clone(),
            labels: scope::relevant_labels(labels),
        },
        kind,
        severity: severity_of(kind, d.class, exit),
        user_initiated: d.class == Class::UserAction,
        reminder: d.reminder,
        detected_by: d.detected_by,
        summary: summary(&d.name, kind, d.class, state.as_ref(), d.exit_code),
        state,
        metrics: None,
        breach: None,
        since: d.since_nano.and_then(nano_to_utc),
        docker_event_time: d.event_time_nano.and_then(nano_to_utc),
        protected: scope::is_protected(labels),
        logs,
    };
    tracing::info!(container = %alert.container.name, kind = alert.kind.as_str(),
        user_initiated = alert.user_initiated, reminder = alert.reminder, "health alert");
    if d.class == Class::Problem
        && !d.reminder
        && d.detected_by == Detection::Event
        && let Some(at) = alert.docker_event_time
    {
        let took = (Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        out.fleet.detected(&d.container_id, took);
    }
    let payload = match d.class {
        Class::Problem => Payload::ContainerUnhealthy(alert),
        Class::UserAction => Payload::ContainerUserAction(alert),
        Class::Recovered => Payload::ContainerRecovered(alert),
    };
    out.alert(payload).await;
}

/// A death reported by Docker's event stream as it happened (not a reminder or a resync).
fn is_fresh_death(d: &Decision) -> bool {
    d.class == Class::Problem
        && d.detected_by == Detection::Event
        && !d.reminder
        && matches!(d.kind, AlertKind::Died | AlertKind::OomKilled)
}

fn listed(c: &ContainerSummary) -> Option<Listed> {
    let id = c.id.clone()?;
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_owned())
        .unwrap_or_else(|| id.chars().take(12).collect());
    let (exit_code, health) = Listed::parse_status(c.status.as_deref().unwrap_or_default());
    Some(Listed {
        id,
        name,
        image: c.image.clone().unwrap_or_default(),
        labels: c.labels.clone().unwrap_or_default(),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        exit_code,
        health,
    })
}

async fn list_in_scope(
    docker: &Docker,
    all: bool,
    scope: &Scope,
) -> Result<Vec<Listed>, bollard::errors::Error> {
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(all).build()))
        .await?;
    // The scope reads the labels as written; what is kept is scrubbed, once, here.
    Ok(list
        .iter()
        .filter_map(listed)
        .filter(|l| scope.contains(&l.labels))
        .map(Listed::scrubbed)
        .collect())
}

/// Gathers what [`Detector::start`] needs, once, at start-up: what the `health_alert` stream
/// already holds, and for each container found dead, its inspect and, only for those still
/// undecided after that, Docker's event history. The decisions are [`startup`]'s.
async fn gather_startup(
    docker: &Docker,
    out: &Out,
    bus: &Bus,
    listed: &[Listed],
    lookback: Duration,
) -> Startup {
    let started = Instant::now();
    let reported = read_reported(bus, &out.host).await;
    let mut facts = Startup::default();
    for l in listed
        .iter()
        .filter(|l| l.state == "running" && l.health.as_deref() == Some("unhealthy"))
    {
        if let Some(since) = reported.open_unhealthy(&l.id) {
            tracing::info!(container = %l.name, "unhealthy, and already reported before this start");
            facts.open_unhealthy.insert(l.id.clone(), since);
        }
    }
    if lookback.is_zero() {
        return facts;
    }
    let dead: Vec<Listed> = listed
        .iter()
        .filter(|l| matches!(l.state.as_str(), "exited" | "dead") && l.exit_code != Some(0))
        .cloned()
        .collect();
    let inspected: Vec<(Listed, Option<Exit>)> = futures::stream::iter(dead)
        .map(|l| async move {
            let exit = inspect_exit(docker, out, &l.id).await;
            (l, exit)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let now_nano = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    // Asked at most once, and only if some death needs it.
    let mut history: Option<Option<EventHistory>> = None;
    for (l, exit) in inspected {
        let Some(exit) = exit else { continue };
        let verdict = match startup::triage(&l.id, &exit, &reported, now_nano, lookback) {
            Triage::Decided(v) => v,
            Triage::AskHistory(kind) => {
                if history.is_none() {
                    history = Some(event_history(docker).await);
                }
                let stop = match (
                    history.as_ref().and_then(Option::as_ref),
                    exit.finished_at_nano,
                ) {
                    (Some(h), Some(finished)) => h.stop_history(&l.id, finished),
                    _ => startup::StopHistory::CannotTell,
                };
                startup::settle(kind, stop)
            }
        };
        match verdict {
            Verdict::Report(kind) => {
                tracing::info!(container = %l.name, kind = kind.as_str(), exit_code = exit.exit_code,
                    "died while the monitor was not running; reporting it");
            }
            Verdict::AlreadyReported(kind) => {
                tracing::debug!(container = %l.name, kind = kind.as_str(), "death already reported");
            }
            Verdict::Skip(skip @ (startup::Skip::CannotTell | startup::Skip::StoppedByAPerson)) => {
                tracing::info!(container = %l.name, exit_code = exit.exit_code, "{}", skip.reason());
            }
            Verdict::Skip(skip) => {
                tracing::debug!(container = %l.name, exit_code = exit.exit_code, "{}", skip.reason());
            }
        }
        facts.deaths.insert(
            l.id.clone(),
            startup::Death {
                verdict,
                exit_code: exit.exit_code,
                finished_at_nano: exit.finished_at_nano,
            },
        );
    }
    tracing::info!(
        dead = facts.deaths.len(),
        reported = facts
            .deaths
            .values()
            .filter(|d| matches!(d.verdict, Verdict::Report(_)))
            .count(),
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "checked for deaths while the monitor was not running"
    );
    facts
}

/// The newest [`startup::HISTORY_ENTRIES`] of the `health_alert` stream, read once. If Redis
/// does not answer, start-up goes on without it: a death may then be reported a second time,
/// which the responder answers with `skipped` if the container runs again by then, while a
/// death never reported would never be healed.
async fn read_reported(bus: &Bus, host: &str) -> Reported {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
    for attempt in 1..=4 {
        match bus
            .recent(Channel::HealthAlert, startup::HISTORY_ENTRIES)
            .await
        {
            Ok(envs) => return Reported::from_envelopes(&envs, host),
            Err(e) if attempt < 4 => {
                tracing::debug!(error = %e, "cannot read the health_alert stream yet");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e,
                    "cannot read the health_alert stream; problems found at start-up are reported even if an earlier monitor reported them");
            }
        }
    }
    Reported::default()
}

/// How a container that is not running ended, from inspect; `None` if it is gone or runs again.
async fn inspect_exit(docker: &Docker, out: &Out, id: &str) -> Option<Exit> {
    let i = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()?;
    out.remember(id, container_state(&i));
    let st = i.state.as_ref()?;
    if st.running == Some(true) {
        return None;
    }
    Some(Exit {
        exit_code: st.exit_code,
        oom_killed: st.oom_killed.unwrap_or(false),
        finished_at_nano: st
            .finished_at
            .as_deref()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
            .and_then(|t| t.timestamp_nanos_opt()),
    })
}

/// Everything Docker's event history still holds (its newest 256 events), in one call, so the
/// oldest event and each container's `start`s and `stop`s come from one consistent snapshot.
/// `None` if Docker could not be asked.
async fn event_history(docker: &Docker) -> Option<EventHistory> {
    let now = Utc::now();
    let opts = EventsOptionsBuilder::new()
        .since("1")
        // Now, to the nanosecond: Docker holds an events call open until `until` has passed.
        .until(&format!(
            "{}.{:09}",
            now.timestamp(),
            now.timestamp_subsec_nanos()
        ))
        .build();
    let all = tokio::time::timeout(
        Duration::from_secs(5),
        docker.events(Some(opts)).take(10_000).collect::<Vec<_>>(),
    )
    .await;
    let all = match all {
        Ok(all) => all,
        Err(_) => {
            tracing::warn!("docker's event history did not answer in 5 s");
            return None;
        }
    };
    let mut oldest = None;
    let mut containers = Vec::new();
    for msg in all {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read docker's event history");
                return None;
            }
        };
        let time = msg
            .time_nano
            .or_else(|| msg.time.map(|t| t.saturating_mul(1_000_000_000)));
        oldest = oldest.or(time);
        if msg.typ == Some(bollard::models::EventMessageTypeEnum::CONTAINER)
            && let (Some(id), Some(action)) = (msg.actor.and_then(|a| a.id), msg.action)
        {
            containers.push((id, action));
        }
    }
    Some(EventHistory::new(oldest, containers))
}

/// Follows Docker's event stream, re-establishing it with backoff when it drops. Each
/// (re)connection first lists containers and reconciles, then asks Docker to replay events
/// since the last one seen, so nothing that happened in between is missed silently.
async fn watch_events(
    cfg: Arc<MonitorConfig>,
    docker: Docker,
    out: Out,
    bus: Bus,
    health: Health,
    shutdown: Shutdown,
) {
    let mut detector = Detector::new(cfg.detect);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut initial = true;
    while !shutdown.is_cancelled() {
        // Reconcile first: what changed while we were not listening? Events from the moment
        // of this listing on are then replayed by Docker (`since`), so there is no gap between
        // the listing and the stream.
        let listed_at = Utc::now();
        match list_in_scope(&docker, true, &cfg.scope).await {
            Ok(listed) => {
                out.docker_ok(true);
                let decisions = if initial {
                    let startup = tokio::select! {
                        // A shutdown need not wait for start-up's Docker and Redis calls.
                        () = shutdown.cancelled() => return,
                        // What died while no monitor was running, and what was reported then.
                        s = gather_startup(&docker, &out, &bus, &listed, cfg.startup_lookback) => s,
                    };
                    detector.start(&listed, &startup, Instant::now())
                } else {
                    detector.resync(&listed, Instant::now())
                };
                for d in decisions {
                    tokio::spawn(publish_decision(docker.clone(), out.clone(), d));
                }
                initial = false;
            }
            Err(e) => {
                out.docker_ok(false);
                health.degraded("docker", e.to_string());
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot list containers");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        }

        let mut filters = HashMap::new();
        filters.insert("type", vec!["container"]);
        let mut opts = EventsOptionsBuilder::new().filters(&filters);
        let since = match detector.last_event_time_nano() {
            0 => listed_at.timestamp_nanos_opt().unwrap_or(0),
            last => last,
        };
        if since > 0 {
            opts = opts.since(&format!(
                "{}.{:09}",
                since / 1_000_000_000,
                since % 1_000_000_000
            ));
        }
        let mut events = docker.events(Some(opts.build()));
        tracing::info!("following docker events");
        let mut connected = false;
        loop {
            let deadline = detector.next_deadline();
            let next = tokio::select! {
                // Stop reading; pending decisions are dropped (nothing half-published).
                () = shutdown.cancelled() => return,
                // Settle held `die`s, pending `oom`s and reminders when they fall due.
                () = sleep_until(deadline) => {
                    for d in detector.on_tick(Instant::now()) {
                        tokio::spawn(publish_decision(docker.clone(), out.clone(), d));
                    }
                    continue;
                }
                ev = events.next() => ev,
            };
            match next {
                Some(Ok(msg)) => {
                    if !connected {
                        connected = true;
                        health.ok("docker");
                        out.docker_ok(true);
                        backoff.reset();
                    }
                    out.metrics.docker_events.inc();
                    let Some(ev) = to_event(msg) else { continue };
                    if ev.action == "destroy" {
                        out.forget(&ev.id);
                    }
                    if !cfg.scope.contains(&ev.attributes) {
                        continue;
                    }
                    // The scope reads the labels as written; from here on the event's text
                    // goes into alerts and logs, so it is scrubbed, once, here.
                    let ev = ev.scrubbed();
                    out.fleet.event(&ev);
                    if ev.action == "start" {
                        // Docker's restart count for the fleet metrics: a restart by its
                        // restart policy is a `start`.
                        tokio::spawn(refresh_restart_count(
                            docker.clone(),
                            out.clone(),
                            ev.id.clone(),
                        ));
                    }
                    tracing::debug!(container = ev.name(), action = %ev.action,
                        lag_ms = (Utc::now().timestamp_nanos_opt().unwrap_or(0) - ev.time_nano) as f64 / 1e6,
                        "docker event");
                    // Decide synchronously (ordering matters), enrich and publish concurrently
                    // (an inspect must not delay the next container's alert).
                    for d in detector.on_event(ev, Instant::now()) {
                        tokio::spawn(publish_decision(docker.clone(), out.clone(), d));
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "docker event stream error");
                    break;
                }
                None => {
                    tracing::warn!("docker event stream ended");
                    break;
                }
            }
        }
        out.docker_ok(false);
        health.degraded("docker", "event stream lost; reconnecting");
        out.metrics.event_stream_reconnects.inc();
        let delay = backoff.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Inspects a container that just started, for its restart count.
async fn refresh_restart_count(docker: Docker, out: Out, id: String) {
    if let Ok(i) = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
    {
        out.remember(&id, container_state(&i));
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn to_event(msg: bollard::models::EventMessage) -> Option<DockerEvent> {
    let actor = msg.actor?;
    Some(DockerEvent {
        id: actor.id?,
        action: msg.action?,
        attributes: actor.attributes.unwrap_or_default(),
        time_nano: msg
            .time_nano
            .or_else(|| msg.time.map(|t| t * 1_000_000_000))
            .unwrap_or(0),
    })
}

/// Per-container judging state kept between stats rounds.
#[derive(Default)]
struct Judged {
    counters: Option<stats::CpuCounters>,
    cpu: Watch,
    memory: Watch,
    cpu_anomaly: Watch,
    memory_anomaly: Watch,
    cpu_baseline: Baseline,
    memory_baseline: Baseline,
    cpu_limit_cores: Option<f64>,
    inspected: bool,
}

/// How often at most an overrunning stats round is logged.
const OVERRUN_LOG_EVERY: Duration = Duration::from_secs(600);

/// Samples every watched running container each interval, concurrently with a bound.
async fn watch_stats(cfg: Arc<MonitorConfig>, docker: Docker, out: Out, shutdown: Shutdown) {
    let mut state: HashMap<String, Judged> = HashMap::new();
    // Overruns are logged at most every ten minutes, with how many there were since.
    let mut overruns: (Option<Instant>, u64) = (None, 0);
    let mut tick = tokio::time::interval(cfg.stats_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        // Every container in scope, running or not: the fleet metrics follow all of them, and
        // drop the series of those that are gone. Only running ones are sampled.
        let listed = match list_in_scope(&docker, true, &cfg.scope).await {
            Ok(l) => {
                out.docker_ok(true);
                l
            }
            Err(e) => {
                out.docker_ok(false);
                tracing::warn!(error = %e, "stats: cannot list containers");
                continue;
            }
        };
        out.fleet.listed(&listed);
        let running: Vec<Listed> = listed
            .into_iter()
            .filter(|l| l.state == "running")
            .collect();
        out.metrics.watched_containers.set(running.len() as i64);
        let live: HashSet<&str> = running.iter().map(|l| l.id.as_str()).collect();
        state.retain(|id, _| live.contains(id.as_str()));

        // Containers seen for the first time get one inspect for their CPU limit.
        for l in &running {
            let j = state.entry(l.id.clone()).or_default();
            if !j.inspected {
                j.inspected = true;
                if let Ok(i) = docker
                    .inspect_container(&l.id, None::<InspectContainerOptions>)
                    .await
                {
                    j.cpu_limit_cores = cpu_limit_cores(&i);
                    out.remember(&l.id, container_state(&i));
                }
            }
        }

        let timeout = cfg.stats_interval.max(Duration::from_secs(5));
        let in_flight = cfg.stats_concurrency.in_flight(running.len());
        let fetched: Vec<(Listed, Option<bollard::models::ContainerStatsResponse>)> =
            futures::stream::iter(running)
                .map(|l| {
                    let docker = docker.clone();
                    async move {
                        let opts = StatsOptionsBuilder::new()
                            .stream(false)
                            .one_shot(true)
                            .build();
                        let mut s = docker.stats(&l.id, Some(opts));
                        let r = tokio::time::timeout(timeout, s.next()).await;
                        let stats = match r {
                            Ok(Some(Ok(s))) => Some(s),
                            _ => None,
                        };
                        (l, stats)
                    }
                })
                .buffer_unordered(in_flight)
                .collect()
                .await;

        let mut samples = Vec::with_capacity(fetched.len());
        let mut alerts = Vec::new();
        let now = Instant::now();
        for (l, stats) in fetched {
            let Some(stats) = stats else {
                out.metrics.stats_errors.inc();
                continue;
            };
            let j = state.entry(l.id.clone()).or_default();
            let (sample, counters) = stats::sample(&l.id, &l.name, &stats, j.counters);
            j.counters = counters;
            // A container still in its health-check start period is not judged yet.
            if l.health.as_deref() != Some("starting") {
                alerts.extend(judge_sample(&cfg, &l, j, &sample, now));
            }
            samples.push(sample);
        }
        let took = started.elapsed();
        out.metrics.stats_round_seconds.observe(took.as_secs_f64());
        if took > cfg.stats_interval {
            out.metrics.stats_round_overruns.inc();
            overruns.1 += 1;
            if overruns
                .0
                .is_none_or(|at| at.elapsed() >= OVERRUN_LOG_EVERY)
            {
                tracing::warn!(took = ?took, interval = ?cfg.stats_interval, rounds = overruns.1,
                    "stats round overran its interval (rounds: how many since the last such line)");
                overruns = (Some(Instant::now()), 0);
            }
        }
        out.sample(Payload::ContainerMetrics(MetricsBatch {
            samples,
            collect_ms: took.as_millis() as u64,
        }));
        for a in alerts {
            out.alert(a).await;
        }
    }
}

fn cpu_limit_cores(i: &ContainerInspectResponse) -> Option<f64> {
    let hc = i.host_config.as_ref()?;
    if let Some(n) = hc.nano_cpus.filter(|n| *n > 0) {
        return Some(n as f64 / 1e9);
    }
    match (hc.cpu_quota, hc.cpu_period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
        _ => None,
    }
}

/// Runs one sample through the thresholds and baselines; returns the alerts to publish.
fn judge_sample(
    cfg: &MonitorConfig,
    l: &Listed,
    j: &mut Judged,
    sample: &ContainerSample,
    now: Instant,
) -> Vec<Payload> {
    let mut out = Vec::new();
    let cpu_th = Threshold {
        warning: scope::percent_label(&l.labels, scope::LABEL_CPU_THRESHOLD)
            .unwrap_or(cfg.cpu.warning),
        critical: cfg.cpu.critical.max(
            scope::percent_label(&l.labels, scope::LABEL_CPU_THRESHOLD).unwrap_or(cfg.cpu.warning),
        ),
    };
    let mem_th = Threshold {
        warning: scope::percent_label(&l.labels, scope::LABEL_MEMORY_THRESHOLD)
            .unwrap_or(cfg.memory.warning),
        critical: cfg.memory.critical.max(
            scope::percent_label(&l.labels, scope::LABEL_MEMORY_THRESHOLD)
                .unwrap_or(cfg.memory.warning),
        ),
    };
    // CPU is judged against the container's CPU limit when it has one, else one core.
    let cpu = sample.cpu_percent.map(|c| match j.cpu_limit_cores {
        Some(cores) if cores > 0.0 => c / cores,
        _ => c,
    });
    let reminder = cfg.detect.reminder_interval;
    let sustain = cfg.breach_samples;

    let mut check = |watch: &mut Watch,
                     kind: AlertKind,
                     metric: &str,
                     value: Option<f64>,
                     th: f64,
                     severity: Option<Severity>,
                     baseline: Option<&Baseline>| {
        let Some(value) = value else { return };
        let Some(t) = watch.observe(severity, sustain, reminder, now) else {
            return;
        };
        let breach = Breach {
            metric: metric.to_owned(),
            value,
            threshold: th,
            samples: watch.consecutive_over().max(1),
            baseline_mean: baseline.map(Baseline::mean),
            baseline_stddev: baseline.map(Baseline::stddev),
        };
        let (class, severity, reminder) = match t {
            Transition::Fire { severity, .. } => (Class::Problem, severity, false),
            Transition::Remind { severity, .. } => (Class::Problem, severity, true),
            Transition::Clear => (Class::Recovered, Severity::Info, false),
        };
        let mut text = summary(&l.name, kind, class, None, None);
        if class == Class::Problem {
            text = format!(
                "{text}: {metric} {value:.1} ≥ {th:.1} for {} samples",
                breach.samples
            );
        }
        let alert = ContainerAlert {
            container: ContainerRef {
                id: l.id.clone(),
                name: l.name.clone(),
                image: l.image.clone(),
                labels: scope::relevant_labels(&l.labels),
            },
            kind,
            severity,
            user_initiated: false,
            reminder,
            detected_by: Detection::Stats,
            summary: text,
            state: None,
            metrics: Some(sample.clone()),
            breach: Some(breach),
            since: None,
            docker_event_time: None,
            protected: scope::is_protected(&l.labels),
            logs: None,
        };
        out.push(match class {
            Class::Recovered => Payload::ContainerRecovered(alert),
            _ => Payload::ContainerUnhealthy(alert),
        });
    };

    let cpu_sev = cpu.and_then(|c| cpu_th.classify(c));
    check(
        &mut j.cpu,
        AlertKind::CpuHigh,
        "cpu_percent",
        cpu,
        cpu_th.warning,
        cpu_sev,
        None,
    );
    let mem = sample.memory_percent;
    let mem_sev = mem.and_then(|m| mem_th.classify(m));
    check(
        &mut j.memory,
        AlertKind::MemoryHigh,
        "memory_percent",
        mem,
        mem_th.warning,
        mem_sev,
        None,
    );

    // The baseline catches what is far from normal but still under the fixed thresholds; the
    // fixed thresholds above always fire regardless of what the baseline has learned.
    if let Some(c) = cpu {
        let limit = j.cpu_baseline.observe(c, &cfg.baseline);
        let sev = limit
            .filter(|_| cpu_sev.is_none())
            .map(|_| Severity::Warning);
        let th = limit.unwrap_or(j.cpu_baseline.mean());
        let base = j.cpu_baseline.clone();
        check(
            &mut j.cpu_anomaly,
            AlertKind::Anomaly,
            "cpu_percent",
            Some(c),
            th,
            sev,
            Some(&base),
        );
    }
    if let Some(m) = mem {
        let limit = j.memory_baseline.observe(m, &cfg.baseline);
        let sev = limit
            .filter(|_| mem_sev.is_none())
            .map(|_| Severity::Warning);
        let th = limit.unwrap_or(j.memory_baseline.mean());
        let base = j.memory_baseline.clone();
        check(
            &mut j.memory_anomaly,
            AlertKind::Anomaly,
            "memory_percent",
            Some(m),
            th,
            sev,
            Some(&base),
        );
    }
    out
}

/// Samples the host each interval; publishes samples and host alerts on transitions.
async fn watch_host(cfg: Arc<MonitorConfig>, docker: Docker, out: Out, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(cfg.host_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev_cpu: Option<host::CpuTimes> = None;
    let mut docker_usage: Option<DockerDiskUsage> = None;
    let mut next_df = Instant::now();
    let mut watches: HashMap<HostAlertKind, Watch> = HashMap::new();
    let mut warned = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut sample = HostSample {
            disk_path: cfg.disk_path.display().to_string(),
            ..HostSample::default()
        };
        let read = (|| -> std::io::Result<()> {
            let stat = host::read_proc(&cfg.proc_path, "stat")?;
            if let Some((cur, cores)) = host::parse_proc_stat(&stat) {
                sample.cpu_count = cores;
                sample.cpu_percent = prev_cpu.and_then(|p| host::cpu_percent(p, cur));
                prev_cpu = Some(cur);
            }
            let mem = host::read_proc(&cfg.proc_path, "meminfo")?;
            if let Some((total, avail)) = host::parse_meminfo(&mem) {
                sample.memory_total_bytes = total;
                sample.memory_available_bytes = avail;
                sample.memory_percent = pct(total.saturating_sub(avail), total);
            }
            let (total, avail) = host::disk_usage(&cfg.disk_path)?;
            sample.disk_total_bytes = total;
            sample.disk_available_bytes = avail;
            sample.disk_percent = pct(total.saturating_sub(avail), total);
            Ok(())
        })();
        if let Err(e) = read {
            if !warned {
                tracing::warn!(error = %e, proc = %cfg.proc_path.display(), disk = %cfg.disk_path.display(),
                    "cannot read host measurements; host alerts are off until this works");
                warned = true;
            }
            continue;
        }
        if Instant::now() >= next_df {
            next_df = Instant::now() + cfg.docker_df_interval;
            docker_usage = docker_disk_usage(&docker).await.ok();
        }
        sample.docker = docker_usage.clone();
        if let Ok(all) = docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
            .await
        {
            sample.containers_total = all.len() as u32;
            sample.containers_running = all
                .iter()
                .filter(|c| c.state.map(|s| s.to_string()).as_deref() == Some("running"))
                .count() as u32;
        }

        for alert in judge_host(&mut watches, &cfg, &sample, Instant::now()) {
            out.alert(alert).await;
        }
        out.sample(Payload::HostMetrics(sample));
    }
}

/// Runs one host sample through the disk, memory and CPU thresholds; returns the alerts to
/// publish. Each must hold for `host_breach_samples` consecutive samples to fire (a disk that
/// fills for one sample while a big image is unpacked is not pressure) and to clear.
fn judge_host(
    watches: &mut HashMap<HostAlertKind, Watch>,
    cfg: &MonitorConfig,
    sample: &HostSample,
    now: Instant,
) -> Vec<Payload> {
    let checks = [
        (
            HostAlertKind::DiskPressure,
            Some(sample.disk_percent),
            cfg.disk_threshold,
            "disk",
        ),
        (
            HostAlertKind::MemoryPressure,
            Some(sample.memory_percent),
            cfg.host_memory_threshold,
            "memory",
        ),
        (
            HostAlertKind::CpuPressure,
            sample.cpu_percent,
            cfg.host_cpu_threshold,
            "CPU",
        ),
    ];
    let mut alerts = Vec::new();
    for (kind, value, threshold, what) in checks {
        let Some(value) = value else { continue };
        let breach = (value >= threshold).then_some(if value >= (threshold + 100.0) / 2.0 {
            Severity::Critical
        } else {
            Severity::Warning
        });
        let watch = watches.entry(kind).or_default();
        let Some(t) = watch.observe(
            breach,
            cfg.host_breach_samples,
            cfg.detect.reminder_interval,
            now,
        ) else {
            continue;
        };
        let (recovered, severity, reminder) = match t {
            Transition::Fire { severity, .. } => (false, severity, false),
            Transition::Remind { severity, .. } => (false, severity, true),
            Transition::Clear => (true, Severity::Info, false),
        };
        let summary = if recovered {
            format!("host {what} use is back under {threshold:.0} % ({value:.1} %)")
        } else {
            format!("host {what} use is {value:.1} %, over {threshold:.0} %")
        };
        let alert = HostAlert {
            kind,
            severity,
            summary,
            reminder,
            sample: sample.clone(),
            threshold: Some(threshold),
        };
        tracing::info!(kind = ?kind, value, threshold, recovered, reminder, "host alert");
        alerts.push(if recovered {
            Payload::HostRecovered(alert)
        } else {
            Payload::HostUnhealthy(alert)
        });
    }
    alerts
}

fn pct(used: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (used as f64 / total as f64 * 10_000.0).round() / 100.0
}

/// Docker's own disk use, from the image and container lists (works on every engine version;
/// the newer `/system/df` shape differs between API versions).
async fn docker_disk_usage(docker: &Docker) -> Result<DockerDiskUsage, bollard::errors::Error> {
    let images = docker
        .list_images(Some(ListImagesOptionsBuilder::new().all(false).build()))
        .await?;
    let mut dangling = HashMap::new();
    dangling.insert("dangling", vec!["true"]);
    let dangling = docker
        .list_images(Some(
            ListImagesOptionsBuilder::new().filters(&dangling).build(),
        ))
        .await?;
    let mut exited = HashMap::new();
    exited.insert("status", vec!["exited", "dead", "created"]);
    let stopped = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&exited)
                .build(),
        ))
        .await?;
    Ok(DockerDiskUsage {
        images_bytes: images.iter().map(|i| i.size.max(0) as u64).sum(),
        images_count: images.len() as u32,
        dangling_images_count: dangling.len() as u32,
        stopped_containers: stopped.len() as u32,
        build_cache_bytes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_well() {
        let cases = [
            (
                AlertKind::Died,
                Class::Problem,
                Some(3),
                "container web died (exit code 3)",
            ),
            (
                AlertKind::Died,
                Class::Problem,
                Some(0),
                "container web exited cleanly (exit code 0)",
            ),
            (
                AlertKind::Died,
                Class::Problem,
                Some(137),
                "container web was killed (exit code 137, SIGKILL)",
            ),
            (
                AlertKind::Stopped,
                Class::UserAction,
                Some(0),
                "container web was stopped by a person (docker stop)",
            ),
            (
                AlertKind::Died,
                Class::Recovered,
                None,
                "container web is running again",
            ),
            (
                AlertKind::Unhealthy,
                Class::Recovered,
                None,
                "container web is healthy again",
            ),
        ];
        for (kind, class, exit, want) in cases {
            assert_eq!(summary("web", kind, class, None, exit), want);
        }
    }

    #[test]
    fn severities() {
        assert_eq!(
            severity_of(AlertKind::Died, Class::Problem, Some(1)),
            Severity::Critical
        );
        assert_eq!(
            severity_of(AlertKind::Died, Class::Problem, Some(0)),
            Severity::Info
        );
        assert_eq!(
            severity_of(AlertKind::Stopped, Class::UserAction, None),
            Severity::Info
        );
        assert_eq!(
            severity_of(AlertKind::CpuHigh, Class::Problem, None),
            Severity::Warning
        );
    }

    fn config(args: &[&str]) -> MonitorConfig {
        let mut all = vec!["hemostat-monitor"];
        all.extend_from_slice(args);
        let a: config::MonitorArgs =
            hemostat_common::config::parse_from(all).unwrap_or_else(|e| panic!("{e}"));
        a.validate().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn host_pressure_must_last_and_every_host_alert_carries_its_threshold() {
        let cfg = config(&[
            "--disk-threshold",
            "50",
            "--host-memory-threshold",
            "90",
            "--host-breach-samples",
            "3",
            "--reminder-interval",
            "60s",
        ]);
        // (seconds since start, disk %, memory %) → (event_type, kind, reminder, threshold)
        type Row = (u64, f64, f64, Vec<(&'static str, HostAlertKind, bool, f64)>);
        use HostAlertKind::{DiskPressure as Disk, MemoryPressure as Mem};
        let rows: Vec<Row> = vec![
            (0, 60.0, 10.0, vec![]),
            (1, 10.0, 95.0, vec![]),
            (2, 60.0, 95.0, vec![]),
            (3, 60.0, 95.0, vec![("host_unhealthy", Mem, false, 90.0)]),
            (4, 60.0, 95.0, vec![("host_unhealthy", Disk, false, 50.0)]),
            (5, 60.0, 95.0, vec![]),
            (30, 60.0, 10.0, vec![]),
            (64, 60.0, 10.0, vec![("host_unhealthy", Disk, true, 50.0)]),
            (65, 10.0, 10.0, vec![("host_recovered", Mem, false, 90.0)]),
            (66, 10.0, 10.0, vec![]),
            (67, 10.0, 10.0, vec![("host_recovered", Disk, false, 50.0)]),
            (68, 10.0, 10.0, vec![]),
        ];
        let mut watches = HashMap::new();
        let t0 = Instant::now();
        for (secs, disk, mem, want) in rows {
            let sample = HostSample {
                disk_percent: disk,
                memory_percent: mem,
                ..HostSample::default()
            };
            let got: Vec<_> =
                judge_host(&mut watches, &cfg, &sample, t0 + Duration::from_secs(secs))
                    .into_iter()
                    .map(|p| {
                        let event_type = p.event_type();
                        match p {
                            Payload::HostUnhealthy(a) | Payload::HostRecovered(a) => (
                                event_type,
                                a.kind,
                                a.reminder,
                                a.threshold.unwrap_or(f64::NAN),
                            ),
                            other => panic!("not a host alert: {other:?}"),
                        }
                    })
                    .collect();
            assert_eq!(got, want, "at {secs} s");
        }
    }

    #[test]
    fn host_breach_samples_follow_the_container_setting_by_default() {
        let cfg = config(&["--disk-threshold", "50", "--breach-samples", "1"]);
        let sample = HostSample {
            disk_percent: 60.0,
            ..HostSample::default()
        };
        let fired = judge_host(&mut HashMap::new(), &cfg, &sample, Instant::now());
        assert_eq!(fired.len(), 1, "{fired:?}");
    }

    #[test]
    fn event_times_convert() {
        let t = nano_to_utc(1_700_000_000_123_456_789);
        assert_eq!(
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
            Some("2023-11-14T22:13:20.123456789Z".to_owned())
        );
    }
}
