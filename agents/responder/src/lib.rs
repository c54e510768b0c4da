//! hemostat-responder: the only component that writes to Docker.
//!
//! For each `remediation_needed` addressed to its host it re-checks every safety rule itself
//! (it never trusts a message), acts through bollard, verifies, and reports every decision,
//! refusals included, on `hemostat:remediation_complete` and in the audit stream.
//!
//! The order of the checks is the order of the safety rules in DESIGN.md: wrong host → ignore;
//! already handled → skip; another replica acting → skip; gone, out of scope, protected →
//! reject; a person's stop or pause → skip; storm → pause and escalate once; breaker open →
//! reject (escalate once when it opens); backoff → wait; rate limit → wait; act (unless dry
//! run); verify; restart dependents.

pub mod config;
pub mod docker_ops;
pub mod policy;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::{Bus, ConsumerConfig, RecentWindow, consume};
use hemostat_common::events::{
    AUDIT_STREAM, Action, Channel, ContainerRef, Envelope, Escalation, EscalationKind, Outcome,
    Payload, RemediationRequest, RemediationResult, Severity, Verification,
};
use hemostat_common::scope;
use hemostat_common::shutdown::Shutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::ResponderConfig;
use crate::policy::StormPolicy;

/// The agent's name on the bus.
pub const AGENT: &str = "responder";

/// How long "already handled" markers live.
const HANDLED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Label set for action counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Default)]
pub struct ResponderMetrics {
    pub decisions: Family<ActionLabel, Counter>,
    pub escalations: Counter,
    pub ignored_other_host: Counter,
}

/// Redis keys of the responder's shared state (public: the dashboard reads breakers) (shared by replicas on one host, and surviving
/// restarts). Containers are keyed by name: compose recreates a container under the same name,
/// and its history must follow it.
pub mod keys {
    pub fn history(host: &str, name: &str) -> String {
        format!("hemostat:history:{host}:{name}")
    }
    pub fn breaker(host: &str, name: &str) -> String {
        format!("hemostat:breaker:{host}:{name}")
    }
    pub fn lock(host: &str, name: &str) -> String {
        format!("hemostat:lock:{host}:{name}")
    }
    pub fn storm(host: &str) -> String {
        format!("hemostat:storm:{host}")
    }
    pub fn storm_pause(host: &str) -> String {
        format!("hemostat:storm_pause:{host}")
    }
    pub fn handled(host: &str, id: &str) -> String {
        format!("hemostat:seen:responder:{host}:{id}")
    }
}

/// One decision, ready to report.
struct Report {
    outcome: Outcome,
    reason: String,
    verification: Option<Verification>,
    escalation: Option<Escalation>,
}

impl Report {
    fn new(outcome: Outcome, reason: impl Into<String>) -> Report {
        Report {
            outcome,
            reason: reason.into(),
            verification: None,
            escalation: None,
        }
    }
}

pub struct Responder {
    cfg: ResponderConfig,
    docker: Docker,
    bus: Bus,
    host: String,
    instance: String,
    writes: DefaultDirectRateLimiter,
    shutdown: Shutdown,
    /// Recent health alerts, read incrementally: where a person's stop is remembered.
    recent_alerts: RecentWindow,
    /// The host's in-scope container count and when it was taken (see `in_scope_count`).
    in_scope: tokio::sync::Mutex<Option<(Instant, u32)>>,
    pub metrics: ResponderMetrics,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("host", &self.host)
            .field("dry_run", &self.cfg.dry_run)
            .finish_non_exhaustive()
    }
}

/// How long one count of the host's in-scope containers serves the storm guard.
const IN_SCOPE_TTL: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

impl Responder {
    pub fn new(
        cfg: ResponderConfig,
        docker: Docker,
        bus: Bus,
        host: &str,
        instance: &str,
        shutdown: Shutdown,
    ) -> Responder {
        let rate = NonZeroU32::new(cfg.docker_write_rate.max(1)).unwrap_or(NonZeroU32::MIN);
        Responder {
            writes: RateLimiter::direct(Quota::per_minute(rate)),
            cfg,
            docker,
            bus,
            host: host.to_owned(),
            instance: instance.to_owned(),
            shutdown,
            recent_alerts: RecentWindow::new(Channel::HealthAlert, 2000),
            in_scope: tokio::sync::Mutex::new(None),
            metrics: ResponderMetrics::default(),
        }
    }

    fn register(&self, ctx: &AgentContext) {
        ctx.registry.with(|r| {
            r.register(
                "hemostat_responder_decisions",
                "Remediation decisions by action and outcome",
                self.metrics.decisions.clone(),
            );
            r.register(
                "hemostat_responder_escalations",
                "Escalations sent to hemostat:alerts",
                self.metrics.escalations.clone(),
            );
            r.register(
                "hemostat_responder_ignored_other_host",
                "Requests addressed to another Docker host",
                self.metrics.ignored_other_host.clone(),
            );
        });
    }

    /// Handles one `remediation_needed` envelope.
    pub async fn handle(&self, env: Envelope) -> anyhow::Result<()> {
        let Payload::RemediationNeeded(req) = &env.payload else {
            return Ok(());
        };
        if req.target_host != self.host {
            self.metrics.ignored_other_host.inc();
            tracing::debug!(target_host = %req.target_host, "request for another host; ignored");
            return Ok(());
        }
        let marker = keys::handled(&self.host, &env.id);
        let mut conn = self.bus.connection();
        let handled: bool = redis::cmd("EXISTS")
            .arg(&marker)
            .query_async(&mut conn)
            .await?;
        if handled {
            tracing::debug!(request = %env.id, "already handled");
            return Ok(());
        }
        let started = Instant::now();
        let (container, report) = match &req.container {
            None if req.action == Action::Cleanup => (None, self.cleanup().await),
            None => (
                None,
                Report::new(
                    Outcome::Rejected,
                    format!(
                        "{:?} needs a container and the request names none",
                        req.action
                    ),
                ),
            ),
            Some(c) => {
                let lock = keys::lock(&self.host, &c.name);
                let holder = format!("{}|{}", self.instance, env.id);
                if let Some(other) = self.lock(&lock, &holder, self.lease(req)).await? {
                    if other.ends_with(&format!("|{}", env.id)) {
                        // The same request, redelivered while a peer is still acting on it:
                        // that peer reports it; reporting here would take its marker.
                        tracing::debug!(request = %env.id, "already being handled by {other}");
                        return Ok(());
                    }
                    (
                        Some(c.clone()),
                        Report::new(
                            Outcome::Skipped,
                            "another responder is acting on this container right now",
                        ),
                    )
                } else {
                    let r = self.container(req, c).await;
                    self.unlock(&lock, &holder).await;
                    (Some(c.clone()), r)
                }
            }
        };
        self.report(&env, req, container, report, started.elapsed(), &marker)
            .await
    }

    /// How long the per-container lock lives if we die holding it: longer than the longest
    /// backoff, a slow stop and verification together.
    fn lease(&self, _req: &RemediationRequest) -> Duration {
        self.cfg.backoff.max + self.cfg.verify_timeout + Duration::from_secs(600)
    }

    /// Takes the container's lock for `holder` (`instance|request id`). `None` when taken;
    /// otherwise who holds it.
    async fn lock(
        &self,
        key: &str,
        holder: &str,
        lease: Duration,
    ) -> anyhow::Result<Option<String>> {
        let mut conn = self.bus.connection();
        let got: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if got.is_some() {
            return Ok(None);
        }
        let other: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        Ok(Some(other.unwrap_or_default()))
    }

    async fn unlock(&self, key: &str, holder: &str) {
        // Only our own lock: compare and delete in one step.
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
        });
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<i64> = SCRIPT.key(key).arg(holder).invoke_async(&mut conn).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, key, "could not release lock; it expires with its lease");
        }
    }

    #[tracing::instrument(skip_all, fields(container = %c.name, action = ?req.action))]
    async fn container(&self, req: &RemediationRequest, c: &ContainerRef) -> Report {
        // Fresh facts, never the message's: by id, or by name if it was recreated.
        let inspected = match docker_ops::inspect(&self.docker, &c.id).await {
            Ok(i) => Ok(i),
            Err(_) => docker_ops::inspect(&self.docker, &c.name).await,
        };
        let i = match inspected {
            Ok(i) => i,
            Err(e) => return Report::new(Outcome::Rejected, format!("container not found: {e}")),
        };
        let id = i.id.clone().unwrap_or_else(|| c.id.clone());
        let name = docker_ops::name(&i);
        let labels = docker_ops::labels(&i);
        if !scope::in_scope(&labels, self.cfg.monitor_all) {
            let why = if labels.contains_key(scope::LABEL_ENABLE) {
                "container opted out (hemostat.enable=false)"
            } else {
                "container is not in scope (no hemostat.enable=true label and HEMOSTAT_MONITOR_ALL is off)"
            };
            return Report::new(Outcome::Rejected, why);
        }
        if scope::is_protected(&labels) {
            let mut r = Report::new(
                Outcome::Rejected,
                "container is protected (hemostat.protect=true or a hemostat service): alert only, never touched",
            );
            r.escalation = Some(Escalation {
                kind: EscalationKind::ProtectedContainer,
                severity: Severity::Critical,
                container: Some(c.clone()),
                summary: format!(
                    "protected container {name} needs attention: {}",
                    req.root_cause
                ),
                detail: format!(
                    "hemostat would have run {:?} but the container is protected; a person must act",
                    req.action
                ),
            });
            return r;
        }
        let status = docker_ops::status(&i);
        if let Some(r) = self.person_acted(&i, req.action).await {
            return r;
        }
        if req.action == Action::None {
            return Report::new(Outcome::Skipped, "the verdict asks for no action");
        }
        if req.action == Action::Cleanup {
            return self.cleanup().await;
        }

        // Host-wide trouble: pause instead of restarting everything.
        match self.storm(&name).await {
            Ok(None) => {}
            Ok(Some(r)) => return r,
            Err(e) => {
                return Report::new(
                    Outcome::Failed,
                    format!("storm guard state unavailable: {e}"),
                );
            }
        }
        // Per-container budget.
        let history = match self.history(&name).await {
            Ok(h) => h,
            Err(e) => {
                return Report::new(
                    Outcome::Failed,
                    format!("remediation history unavailable: {e}"),
                );
            }
        };
        if let Some(r) = self.breaker(&name, c, &history).await {
            return r;
        }
        let wait = self.cfg.backoff.wait(&history, now_ms());
        if !wait.is_zero() {
            tracing::info!(wait = ?wait, streak = self.cfg.backoff.streak(&history, now_ms()), "backing off before acting");
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    return Report::new(Outcome::Skipped, "shutting down during backoff");
                }
                () = tokio::time::sleep(wait) => {}
            }
            // Things change while we wait: it may have come back on its own, or a person
            // may have stopped or paused it.
            if let Ok(again) = docker_ops::inspect(&self.docker, &id).await {
                if let Some(r) = self.person_acted(&again, req.action).await {
                    return r;
                }
                let running = docker_ops::status(&again) == "running";
                let healthy = again
                    .state
                    .as_ref()
                    .and_then(|s| s.health.as_ref())
                    .and_then(|h| h.status)
                    .is_none_or(|s| s.to_string() != "unhealthy");
                if running
                    && healthy
                    && matches!(req.action, Action::Restart | Action::Start)
                    && status != "running"
                {
                    return Report::new(
                        Outcome::Skipped,
                        format!("recovered by itself during a {wait:?} backoff"),
                    );
                }
            }
        }
        if let Err(e) = self.record(&name).await {
            return Report::new(
                Outcome::Failed,
                format!("cannot record the remediation: {e}"),
            );
        }
        let stop = docker_ops::stop_timeout(&labels, self.cfg.stop_timeout);
        let mut r = self.act(req.action, &id, &name, stop).await;
        if r.outcome == Outcome::Success && req.action == Action::Restart && !self.cfg.dry_run {
            let deps = docker_ops::dependents(&self.docker, &id, &name).await;
            if !deps.is_empty() {
                let mut done = Vec::new();
                for (dep_id, dep_name) in deps {
                    let dep_labels = docker_ops::inspect(&self.docker, &dep_id)
                        .await
                        .map(|i| docker_ops::labels(&i))
                        .unwrap_or_default();
                    if scope::is_protected(&dep_labels) {
                        done.push(format!("{dep_name}: protected, not touched"));
                        continue;
                    }
                    if !scope::in_scope(&dep_labels, self.cfg.monitor_all) {
                        done.push(format!("{dep_name}: not in scope, not touched"));
                        continue;
                    }
                    if let Ok(dep_i) = docker_ops::inspect(&self.docker, &dep_id).await
                        && let Some(p) = self.person_acted(&dep_i, Action::Restart).await
                    {
                        done.push(format!("{dep_name}: {}", p.reason));
                        continue;
                    }
                    let dep_stop = docker_ops::stop_timeout(&dep_labels, self.cfg.stop_timeout);
                    let dep = self
                        .act(Action::Restart, &dep_id, &dep_name, dep_stop)
                        .await;
                    done.push(format!("{dep_name}: {}", dep.reason));
                    if dep.outcome != Outcome::Success {
                        r.outcome = Outcome::Failed;
                    }
                }
                r.reason = format!(
                    "{}; dependents restarted after it: {}",
                    r.reason,
                    done.join("; ")
                );
            }
        }
        if r.outcome == Outcome::Failed && r.escalation.is_none() {
            r.escalation = Some(Escalation {
                kind: EscalationKind::RemediationFailed,
                severity: Severity::Critical,
                container: Some(c.clone()),
                summary: format!("{:?} of {name} failed", req.action),
                detail: r.reason.clone(),
            });
        }
        r
    }

    /// `Some(skip)` when a person paused the container, or stopped it since it last started:
    /// a person's action wins over any request.
    async fn person_acted(
        &self,
        i: &bollard::models::ContainerInspectResponse,
        action: Action,
    ) -> Option<Report> {
        let status = docker_ops::status(i);
        if status == "paused" {
            return Some(Report::new(
                Outcome::Skipped,
                "paused by a person; a person's action wins",
            ));
        }
        if !matches!(status.as_str(), "running" | "restarting")
            && action != Action::Start
            && (docker_ops::stopped_by_a_person(&self.docker, i).await
                || self.stop_reported_on_the_bus(i).await)
        {
            return Some(Report::new(
                Outcome::Skipped,
                "stopped by a person (docker stop); a person's action wins",
            ));
        }
        None
    }

    /// Whether the monitor reported a person's stop of this container since it last started.
    /// Docker keeps only its last 256 events, which a busy engine turns over in seconds; the
    /// `health_alert` stream remembers much longer.
    async fn stop_reported_on_the_bus(
        &self,
        i: &bollard::models::ContainerInspectResponse,
    ) -> bool {
        let Some(id) = i.id.as_deref() else {
            return false;
        };
        let started: Option<chrono::DateTime<Utc>> = i
            .state
            .as_ref()
            .and_then(|s| s.started_at.as_deref())
            .and_then(|s| s.parse().ok());
        let reported = self.recent_alerts.read(&self.bus, |mut recent| {
            recent.any(|e| match &e.payload {
                Payload::ContainerUserAction(a) => {
                    a.container.id == id
                        && a.kind == hemostat_common::events::AlertKind::Stopped
                        && e.host == self.host
                        && started.is_none_or(|s| e.timestamp >= s)
                }
                _ => false,
            })
        });
        reported.await.unwrap_or(false)
    }

    /// Performs one action (or, in dry-run, says what it would do) and verifies it.
    async fn act(&self, action: Action, id: &str, name: &str, stop: Duration) -> Report {
        if self.cfg.dry_run {
            return Report::new(
                Outcome::Skipped,
                format!(
                    "dry run: would {} {name} (stop timeout {}s); no Docker call made",
                    verb(action),
                    stop.as_secs()
                ),
            );
        }
        // The host's write budget: wait for a slot rather than burst.
        tokio::select! {
            () = self.shutdown.cancelled() => return Report::new(Outcome::Skipped, "shutting down"),
            () = self.writes.until_ready() => {}
        }
        let acted_at = Utc::now();
        let t0 = Instant::now();
        let result = match action {
            Action::Restart => docker_ops::restart(&self.docker, id, stop).await,
            Action::Stop => docker_ops::stop(&self.docker, id, stop).await,
            Action::Start => docker_ops::start(&self.docker, id).await,
            Action::Cleanup | Action::None => Ok(()),
        };
        if let Err(e) = result {
            return Report::new(
                Outcome::Failed,
                format!("docker {} failed: {e}", verb(action)),
            );
        }
        let took = t0.elapsed();
        if action == Action::Stop {
            return Report::new(
                Outcome::Success,
                format!("stopped {name} in {:.1} s", took.as_secs_f64()),
            );
        }
        let v = docker_ops::verify(&self.docker, id, acted_at, self.cfg.verify_timeout).await;
        let ok = v.running && v.healthy != Some(false);
        let reason = format!(
            "{} {name} in {:.1} s; verification: {}",
            past(action),
            took.as_secs_f64(),
            v.detail
        );
        let mut r = Report::new(
            if ok && !v.detail.starts_with("timed out") {
                Outcome::Success
            } else {
                Outcome::Failed
            },
            reason,
        );
        r.verification = Some(v);
        r
    }

    async fn cleanup(&self) -> Report {
        if !self.cfg.dry_run {
            self.writes.until_ready().await;
        }
        match docker_ops::cleanup(
            &self.docker,
            self.cfg.monitor_all,
            self.cfg.cleanup_volumes,
            self.cfg.dry_run,
        )
        .await
        {
            Ok(c) => {
                let what = if self.cfg.dry_run {
                    "dry run: would remove"
                } else {
                    "removed"
                };
                Report::new(
                    if self.cfg.dry_run {
                        Outcome::Skipped
                    } else {
                        Outcome::Success
                    },
                    format!(
                        "{what} {} exited container(s) [{}]; {} dangling image(s), {} MiB reclaimed; volumes {}; left alone: [{}]",
                        c.containers.len(),
                        c.containers.join(", "),
                        c.images_deleted,
                        c.bytes_reclaimed / (1024 * 1024),
                        if self.cfg.cleanup_volumes {
                            "removed"
                        } else {
                            "kept"
                        },
                        c.skipped.join(", ")
                    ),
                )
            }
            Err(e) => Report::new(Outcome::Failed, format!("cleanup failed: {e}")),
        }
    }

    /// Remediation times of `name` within the longest window we care about, oldest first.
    async fn history(&self, name: &str) -> redis::RedisResult<Vec<u64>> {
        let horizon = self
            .cfg
            .breaker
            .window
            .max(self.cfg.backoff.reset_after * 4);
        let since = now_ms().saturating_sub(horizon.as_millis() as u64);
        let mut conn = self.bus.connection();
        let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(keys::history(&self.host, name))
            .arg(since)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(members
            .into_iter()
            .map(|(_, s)| s.max(0.0) as u64)
            .collect())
    }

    async fn record(&self, name: &str) -> redis::RedisResult<()> {
        let now = now_ms();
        let key = keys::history(&self.host, name);
        let horizon = self
            .cfg
            .breaker
            .window
            .max(self.cfg.backoff.reset_after * 4);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(now)
            .arg(format!("{now}:{}", ulid::Ulid::new()))
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now.saturating_sub(horizon.as_millis() as u64))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(horizon.as_millis() as u64)
            .ignore();
        let mut conn = self.bus.connection();
        pipe.query_async(&mut conn).await
    }

    /// `Some(report)` when the breaker is (or now becomes) open.
    async fn breaker(&self, name: &str, c: &ContainerRef, history: &[u64]) -> Option<Report> {
        let key = keys::breaker(&self.host, name);
        let mut conn = self.bus.connection();
        let open: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or(false);
        if open {
            return Some(Report::new(
                Outcome::Rejected,
                "circuit breaker open: no more remediations until it closes or is reset",
            ));
        }
        let since = now_ms().saturating_sub(self.cfg.breaker.window.as_millis() as u64);
        let in_window = history.iter().filter(|t| **t >= since).count() as u32;
        if !self.cfg.breaker.trips(in_window) {
            return None;
        }
        // Only the replica that opens it escalates: exactly one escalation per opening.
        let opened: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(Utc::now().to_rfc3339())
            .arg("NX")
            .arg("EX")
            .arg(self.cfg.breaker.cooldown.as_secs().max(1))
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        let mut r = Report::new(
            Outcome::Rejected,
            format!(
                "circuit breaker opened: {in_window} remediations within {} min; no more until it closes (in {} min) or `hemostat-responder reset-breaker {name}`",
                self.cfg.breaker.window.as_secs() / 60,
                self.cfg.breaker.cooldown.as_secs() / 60
            ),
        );
        if opened.is_some() {
            r.escalation = Some(Escalation {
                kind: EscalationKind::CircuitBreakerOpen,
                severity: Severity::Critical,
                container: Some(c.clone()),
                summary: format!(
                    "{name} was remediated {in_window} times in {} min; hemostat stopped trying",
                    self.cfg.breaker.window.as_secs() / 60
                ),
                detail: "a person must look; reset with `hemostat-responder reset-breaker`".into(),
            });
        }
        Some(r)
    }

    /// `Some(report)` when remediation on this host is paused by the storm guard.
    async fn storm(&self, name: &str) -> redis::RedisResult<Option<Report>> {
        let now = now_ms();
        let window = self.cfg.storm.window.as_millis() as u64;
        let key = keys::storm(&self.host);
        let mut conn = self.bus.connection();
        let (_, _, failing, paused): ((), (), u32, bool) = redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(now)
            .arg(name)
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now.saturating_sub(window))
            .cmd("ZCARD")
            .arg(&key)
            .cmd("EXISTS")
            .arg(keys::storm_pause(&self.host))
            .query_async(&mut conn)
            .await?;
        if paused {
            return Ok(Some(Report::new(
                Outcome::Rejected,
                "remediation paused: many containers on this host are failing at once (storm guard)",
            )));
        }
        // Below the share's minimum and within the threshold nothing can trip: skip the count.
        let in_scope = if failing < StormPolicy::SHARE_MIN && failing <= self.cfg.storm.threshold {
            0
        } else {
            self.in_scope_count().await
        };
        if !self.cfg.storm.trips(failing, in_scope) {
            return Ok(None);
        }
        let opened: Option<String> = redis::cmd("SET")
            .arg(keys::storm_pause(&self.host))
            .arg(now)
            .arg("NX")
            .arg("PX")
            .arg(window.max(1000))
            .query_async(&mut conn)
            .await?;
        let mut r = Report::new(
            Outcome::Rejected,
            format!(
                "storm guard: {failing} of {in_scope} containers need remediation within {} s; remediation paused",
                window / 1000
            ),
        );
        if opened.is_some() {
            r.escalation = Some(Escalation {
                kind: EscalationKind::RemediationPaused,
                severity: Severity::Critical,
                container: None,
                summary: format!("{failing} containers on {} failed within {} s: remediation paused", self.host, window / 1000),
                detail: "a host-wide problem (disk, network, a shared dependency) is likely; restarting everything would make it worse".into(),
            });
        }
        Ok(Some(r))
    }

    /// How many containers on this host are in scope. Listing every container costs the engine
    /// milliseconds at a few hundred containers, and the storm guard asks on every remediation
    /// during a burst, so one count serves for a second (a ratio over a 60 s window does not
    /// need it fresher).
    async fn in_scope_count(&self) -> u32 {
        let mut cached = self.in_scope.lock().await;
        if let Some((at, n)) = *cached
            && at.elapsed() < IN_SCOPE_TTL
        {
            return n;
        }
        let list = self
            .docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .build(),
            ))
            .await;
        let Ok(list) = list else {
            // Not cached: the next request asks again.
            return 0;
        };
        let n = list
            .iter()
            .filter(|c| {
                scope::in_scope(&c.labels.clone().unwrap_or_default(), self.cfg.monitor_all)
            })
            .count() as u32;
        *cached = Some((Instant::now(), n));
        n
    }

    /// Publishes the result (and any escalation) once, to the channel and the audit stream.
    async fn report(
        &self,
        env: &Envelope,
        req: &RemediationRequest,
        container: Option<ContainerRef>,
        r: Report,
        took: Duration,
        marker: &str,
    ) -> anyhow::Result<()> {
        let name = container
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "(host)".into());
        let result = RemediationResult {
            container,
            request_id: env.id.clone(),
            action: req.action,
            outcome: r.outcome,
            reason: r.reason.clone(),
            verification: r.verification,
            duration_ms: took.as_millis() as u64,
            dry_run: self.cfg.dry_run,
            guard: None,
            problem: req.problem.as_ref().map(|p| p.kind),
        };
        let mut envs = vec![Envelope::new(
            AGENT,
            &self.host,
            Payload::RemediationComplete(result),
        )];
        let escalated = r.escalation.is_some();
        if let Some(e) = r.escalation {
            envs.push(Envelope::new(AGENT, &self.host, Payload::Escalation(e)));
        }
        let published = self
            .bus
            .publish_once_to(marker, HANDLED_TTL, &envs, &[AUDIT_STREAM])
            .await?;
        if published {
            self.metrics
                .decisions
                .get_or_create(&ActionLabel {
                    action: verb(req.action).to_owned(),
                    outcome: format!("{:?}", r.outcome).to_lowercase(),
                })
                .inc();
            if escalated {
                self.metrics.escalations.inc();
            }
            tracing::info!(container = %name, action = verb(req.action), outcome = ?r.outcome,
                reason = %r.reason, dry_run = self.cfg.dry_run, duration_ms = took.as_millis() as u64, "remediation decision");
        }
        Ok(())
    }
}

fn verb(a: Action) -> &'static str {
    match a {
        Action::Restart => "restart",
        Action::Stop => "stop",
        Action::Start => "start",
        Action::Cleanup => "cleanup",
        Action::None => "none",
    }
}

fn past(a: Action) -> &'static str {
    match a {
        Action::Restart => "restarted",
        Action::Stop => "stopped",
        Action::Start => "started",
        Action::Cleanup => "cleaned up",
        Action::None => "left",
    }
}

/// Closes a container's breaker and forgets its history (the explicit reset command).
pub async fn reset_breaker(bus: &Bus, host: &str, name: &str) -> anyhow::Result<u64> {
    let mut conn = bus.connection();
    let n: u64 = redis::cmd("DEL")
        .arg(keys::breaker(host, name))
        .arg(keys::history(host, name))
        .query_async(&mut conn)
        .await?;
    Ok(n)
}

/// Starts the responder's consumer on `ctx.tracker`. The consumer group is per host, so every
/// host's responders see every request and act only on their own host's.
pub fn spawn(responder: Arc<Responder>, ctx: &AgentContext) {
    responder.register(ctx);
    let group = format!("{AGENT}:{}", ctx.identity.host);
    let mut cfg = ConsumerConfig::new(Channel::RemediationNeeded, &group, &ctx.identity.instance);
    cfg.concurrency = responder.cfg.concurrency;
    // A request can legitimately take minutes (backoff, slow stop, verification): only
    // reclaim it from a peer that has been silent for longer than that.
    cfg.claim_idle =
        responder.cfg.backoff.max + responder.cfg.verify_timeout + Duration::from_secs(120);
    let bus = ctx.bus.clone();
    let shutdown = ctx.shutdown.clone();
    ctx.tracker.spawn(async move {
        consume(&bus, cfg, shutdown, |env| {
            let r = responder.clone();
            async move { r.handle(env).await }
        })
        .await;
    });
}
