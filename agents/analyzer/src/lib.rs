//! hemostat-analyzer: turns each health alert into a verdict: `remediation_needed` (what to do,
//! why, how sure) or `false_alarm` (why not), both with the root cause.
//!
//! Per alert: skip it if already answered (idempotent on the envelope id), fold it if the same
//! problem of the same container already has an analysis or a remediation in flight (and
//! record the fold), gather the facts (the state and log tail the monitor attached, metric
//! trends, recent remediations and alerts), decide by the rules, and, when an LLM is
//! configured and the deciding rule does not bind, ask it with the log tail; validate,
//! publish. The rules never look at the logs.
//!
//! Architecture invariant: the analyzer touches no Docker engine. Everything it knows of a
//! container came on the bus from the monitor of that container's host, so one analyzer (or
//! many replicas) serves any number of hosts and never confuses same-named containers.
//!
//! Architecture invariant: every alert leaves a trace: a verdict (`remediation_needed` or
//! `false_alarm`), or an `alert_folded` record naming what it joined. Only an alert of the same
//! problem kind folds; a different problem of the same container is analysed on its own.
//!
//! Architecture invariant: the target of a verdict is always the alert's container on the
//! alert's host; nothing the LLM or a log line says can change it.

pub mod config;
pub mod llm;
pub mod rules;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::{Bus, ConsumerConfig, RecentWindow, consume};
use hemostat_common::events::{
    Action, AnalysisMethod, Channel, ContainerAlert, ContainerRef, Envelope, Escalation,
    EscalationKind, FalseAlarm, Fold, HostAlert, Payload, Problem, ProblemKind, RemediationRequest,
    Severity, responder_reported_key,
};
use hemostat_common::scrub;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;

use crate::config::AnalyzerConfig;
use crate::llm::Llm;
use crate::rules::{Facts, Trend, Verdict};

/// The agent's name on the bus and its consumer group.
pub const AGENT: &str = "analyzer";

/// The most log bytes that go into one LLM document, whatever an alert carries (the monitor
/// bounds its tail far below this; this bounds the prompt against any publisher).
const PROMPT_LOG_BYTES: usize = 65_536;

/// How long "already answered" markers live.
const ANSWERED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Label set for verdict counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: String,
    pub method: String,
}

/// Analyzer-specific metrics.
#[derive(Clone, Debug, Default)]
pub struct AnalyzerMetrics {
    pub verdicts: Family<VerdictLabel, Counter>,
    pub folded: Counter,
    /// In-flight marks found after their request was reported (a lost clear) and removed.
    pub stale_marks: Counter,
    pub duplicates: Counter,
    pub llm_fallbacks: Counter,
}

/// The analyzer's state shared by its concurrent handlers.
pub struct Analyzer {
    cfg: AnalyzerConfig,
    bus: Bus,
    llm: Option<Llm>,
    agent: String,
    /// Problems being analysed right now in this process.
    analyses: Analyses,
    /// Recent history, read incrementally (see [`RecentWindow`]).
    recent_metrics: RecentWindow,
    recent_remediations: RecentWindow,
    recent_alerts: RecentWindow,
    pub metrics: AnalyzerMetrics,
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("llm", &self.llm)
            .finish_non_exhaustive()
    }
}

/// The problem an alert may fold by: its kind, or `None` when it always gets a verdict of its
/// own. A person's action is never folded: it must be answered (with "leave it alone") even
/// while hemostat is busy with the same container.
fn fold_kind(a: &ContainerAlert) -> Option<ProblemKind> {
    if a.user_initiated {
        return None;
    }
    ProblemKind::of_alert(a.kind)
}

/// The in-process key of one problem of one container: `host/container id/kind`.
fn analysis_key(host: &str, container_id: &str, kind: ProblemKind) -> String {
    format!("{host}/{container_id}/{}", kind.as_str())
}

/// Redis key that says a remediation of this problem of this container is in flight. Its value
/// is the id of the `remediation_needed` envelope, so a fold can name what it joined.
fn inflight_key(host: &str, container_id: &str, kind: ProblemKind) -> String {
    format!("hemostat:inflight:{host}:{container_id}:{}", kind.as_str())
}

/// Every problem a container alert can name (the values of [`ProblemKind::of_alert`]): the
/// in-flight keys a result that names no problem may have set.
const CONTAINER_PROBLEMS: [ProblemKind; 7] = [
    ProblemKind::Died,
    ProblemKind::OomKilled,
    ProblemKind::Oom,
    ProblemKind::Unhealthy,
    ProblemKind::CpuHigh,
    ProblemKind::MemoryHigh,
    ProblemKind::Anomaly,
];

/// Deletes each key in KEYS that still holds ARGV[1]: a result clears only the mark of its own
/// request, never the mark of a newer request for the same problem.
const CLEAR_SCRIPT: &str = r#"
    local n = 0
    for _, key in ipairs(KEYS) do
        if redis.call('GET', key) == ARGV[1] then
            redis.call('DEL', key)
            n = n + 1
        end
    end
    return n
"#;

/// One analysis in progress: the alert being analysed, and a token cancelled when it ends.
#[derive(Debug)]
struct Analysis {
    alert_id: String,
    done: CancellationToken,
}

/// The problems being analysed in this process, by [`analysis_key`].
#[derive(Debug, Default)]
struct Analyses(Mutex<HashMap<String, Analysis>>);

/// What [`Analyses::begin`] found.
enum Begin<'a> {
    /// No analysis of this problem was under way: this alert's starts, and ends when the guard
    /// drops, however the handler ends.
    Started(InFlight<'a>),
    /// Another alert (this id) is being analysed for the same problem: fold into it.
    Joins(String),
    /// This very alert is being analysed by another delivery of it (a copy published twice, an
    /// entry reclaimed while still in hand); the token is cancelled when that analysis ends.
    Copy(CancellationToken),
}

impl Analyses {
    fn begin(&self, key: String, alert_id: &str) -> Begin<'_> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(a) if a.alert_id == alert_id => Begin::Copy(a.done.clone()),
            Some(a) => Begin::Joins(a.alert_id.clone()),
            None => {
                map.insert(
                    key.clone(),
                    Analysis {
                        alert_id: alert_id.to_owned(),
                        done: CancellationToken::new(),
                    },
                );
                Begin::Started(InFlight {
                    analyses: self,
                    key,
                })
            }
        }
    }
}

/// Ends an analysis when dropped: removes its entry and wakes copies waiting on it.
struct InFlight<'a> {
    analyses: &'a Analyses,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.analyses.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = map.remove(&self.key) {
            a.done.cancel();
        }
    }
}

/// What a folded alert joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joined {
    /// The analysis of another alert for the same problem, in this process.
    Analysis,
    /// The remediation requested for the same problem, not reported yet.
    Remediation,
}

impl Joined {
    fn reason(self) -> &'static str {
        match self {
            Joined::Analysis => "the same problem is already being analysed",
            Joined::Remediation => "the same problem is already being remediated",
        }
    }
}

impl Analyzer {
    pub fn new(cfg: AnalyzerConfig, bus: Bus, agent: &str) -> anyhow::Result<Analyzer> {
        let llm = cfg.llm.clone().map(Llm::new).transpose()?;
        Ok(Analyzer {
            cfg,
            bus,
            llm,
            agent: agent.to_owned(),
            analyses: Analyses::default(),
            recent_metrics: RecentWindow::new(Channel::Metrics, 60),
            recent_remediations: RecentWindow::new(Channel::RemediationComplete, 500),
            recent_alerts: RecentWindow::new(Channel::HealthAlert, 500),
            metrics: AnalyzerMetrics::default(),
        })
    }

    fn register(&self, ctx: &AgentContext) {
        ctx.registry.with(|r| {
            r.register(
                "hemostat_analyzer_verdicts",
                "Verdicts published",
                self.metrics.verdicts.clone(),
            );
            r.register(
                "hemostat_analyzer_folded",
                "Alerts folded into an analysis or remediation of the same problem already in flight",
                self.metrics.folded.clone(),
            );
            r.register(
                "hemostat_analyzer_stale_inflight_marks",
                "In-flight marks found after the responder had reported their request, and removed",
                self.metrics.stale_marks.clone(),
            );
            r.register(
                "hemostat_analyzer_duplicates",
                "Redelivered alerts that were already answered",
                self.metrics.duplicates.clone(),
            );
            r.register(
                "hemostat_analyzer_llm_fallbacks",
                "LLM answers that were unusable, so rules decided",
                self.metrics.llm_fallbacks.clone(),
            );
        });
    }

    /// Handles one `health_alert` envelope. Errors leave the entry pending for a retry.
    pub async fn handle(&self, env: Envelope) -> anyhow::Result<()> {
        let marker = format!("hemostat:seen:{}:{}", self.agent, env.id);
        if let Payload::ContainerUnhealthy(a) | Payload::ContainerUserAction(a) = &env.payload {
            // Asks whether it was answered together with its in-flight mark.
            return self.container(&env, a, &marker).await;
        }
        match &env.payload {
            Payload::HostUnhealthy(h) => {
                if self.answered(&marker).await? {
                    return Ok(());
                }
                self.host(&env, h, &marker).await
            }
            // Recoveries need no verdict; other types do not belong on this stream.
            _ => Ok(()),
        }
    }

    /// Clears the in-flight mark of the request the responder reports on: the key of the
    /// result's problem, or, from a responder that does not name the problem, the key of every
    /// problem of that container. Either way only a key that still holds this request's id is
    /// deleted, so a late result never clears the mark of a newer request.
    pub async fn remediation_done(&self, env: Envelope) -> anyhow::Result<()> {
        let Payload::RemediationComplete(r) = &env.payload else {
            return Ok(());
        };
        let Some(c) = &r.container else {
            return Ok(());
        };
        let kinds = match r.problem {
            Some(k) => vec![k],
            None => CONTAINER_PROBLEMS.to_vec(),
        };
        static CLEAR: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(CLEAR_SCRIPT));
        let mut inv = CLEAR.prepare_invoke();
        for k in kinds {
            inv.key(inflight_key(&env.host, &c.id, k));
        }
        inv.arg(&r.request_id);
        let mut conn = self.bus.connection();
        let cleared: i64 = inv.invoke_async(&mut conn).await?;
        tracing::debug!(request_id = %r.request_id, cleared, "remediation reported");
        Ok(())
    }

    /// Whether `marker` says the alert was answered already (a redelivery), counted as such.
    async fn answered(&self, marker: &str) -> anyhow::Result<bool> {
        let mut conn = self.bus.connection();
        let answered: bool = redis::cmd("EXISTS")
            .arg(marker)
            .query_async(&mut conn)
            .await?;
        if answered {
            self.metrics.duplicates.inc();
            tracing::debug!(marker, "already answered");
        }
        Ok(answered)
    }

    /// Whether the in-flight mark `key` (holding `request`) outlived its request: the responder
    /// has reported on it, but the clear that report should have caused never ran (the
    /// analyzer died, or Redis failed over, between the two). Such a mark is removed (only if
    /// it still holds `request`) and the alert is analysed: folding it into a finished
    /// remediation would leave a new problem unanswered.
    async fn stale_mark(&self, env: &Envelope, key: &str, request: &str) -> anyhow::Result<bool> {
        let mut conn = self.bus.connection();
        let reported: bool = redis::cmd("EXISTS")
            .arg(responder_reported_key(&env.host, request))
            .query_async(&mut conn)
            .await?;
        if !reported {
            return Ok(false);
        }
        static CLEAR: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(CLEAR_SCRIPT));
        let cleared: i64 = CLEAR.key(key).arg(request).invoke_async(&mut conn).await?;
        self.metrics.stale_marks.inc();
        tracing::info!(
            request,
            cleared,
            "the remediation this alert would join was already reported; analysing it"
        );
        Ok(true)
    }

    /// Records that `env` joined `into` instead of getting a verdict of its own, once: the
    /// record is published with the alert's answered marker, so a redelivery records nothing.
    async fn fold(
        &self,
        env: &Envelope,
        a: &ContainerAlert,
        marker: &str,
        into: String,
        joined: Joined,
    ) -> anyhow::Result<()> {
        let record = Envelope::new(
            &self.agent,
            &env.host,
            Payload::AlertFolded(Fold {
                container: a.container.clone(),
                alert_id: env.id.clone(),
                kind: a.kind,
                into: into.clone(),
                reason: joined.reason().to_owned(),
            }),
        );
        if self
            .bus
            .publish_once(marker, ANSWERED_TTL, std::slice::from_ref(&record))
            .await?
        {
            self.metrics.folded.inc();
            tracing::info!(into, joined = ?joined, "folded");
        } else {
            self.metrics.duplicates.inc();
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(event_id = %env.id, container = %a.container.name, kind = a.kind.as_str()))]
    async fn container(
        &self,
        env: &Envelope,
        a: &ContainerAlert,
        marker: &str,
    ) -> anyhow::Result<()> {
        // Fold: one analysis per problem of a container at a time, and none while a remediation
        // of that problem is in flight. A different problem is analysed on its own.
        let kind = fold_kind(a);
        let _guard = match kind {
            None => None,
            Some(k) => match self
                .analyses
                .begin(analysis_key(&env.host, &a.container.id, k), &env.id)
            {
                Begin::Started(guard) => Some(guard),
                Begin::Joins(into) => {
                    return self.fold(env, a, marker, into, Joined::Analysis).await;
                }
                Begin::Copy(done) => {
                    // Acking this copy now would release the entry before its effect is
                    // recorded; wait for the other delivery instead, then see what it did.
                    done.cancelled().await;
                    return self.after_copy(env, marker).await;
                }
            },
        };
        // Only now, with this process's analysis of the problem begun, is the in-flight mark
        // read (with the answered marker, in one round trip): a remediation requested by an
        // analysis that ended a moment ago is seen, and joined, unless it was already reported
        // and the mark outlived it.
        let inflight = kind.map(|k| inflight_key(&env.host, &a.container.id, k));
        let mut conn = self.bus.connection();
        let (answered, request): (bool, Option<String>) = redis::pipe()
            .cmd("EXISTS")
            .arg(marker)
            .cmd("GET")
            .arg(inflight.as_deref().unwrap_or(marker))
            .query_async(&mut conn)
            .await?;
        if answered {
            self.metrics.duplicates.inc();
            tracing::debug!("already answered");
            return Ok(());
        }
        if let Some((key, into)) = inflight.as_deref().zip(request)
            && !self.stale_mark(env, key, &into).await?
        {
            return self.fold(env, a, marker, into, Joined::Remediation).await;
        }

        let facts = self.gather(env, a).await;
        let rules = rules::decide(&facts);
        let decided = consult(self.llm.as_ref(), rules, self.document(a, &facts)).await;
        if decided.method == AnalysisMethod::RulesFallback {
            self.metrics.llm_fallbacks.inc();
        }
        let mut out = vec![verdict_payload(
            &self.cfg,
            env,
            Some(&a.container),
            &decided,
        )];
        if decided.rules.escalate {
            out.push(Payload::Escalation(Escalation {
                proposal: None,
                kind: EscalationKind::CrashLoop,
                severity: Severity::Critical,
                container: Some(a.container.clone()),
                summary: format!("{}: {}", a.container.name, decided.rules.root_cause),
                detail: format!(
                    "{}; not restarting: a person must look",
                    decided.rules.reason
                ),
            }));
        }
        self.publish(env, marker, out, &decided, inflight.as_deref())
            .await
    }

    /// After another delivery of the same alert finished its analysis: answered means this
    /// copy is a duplicate; not answered means that analysis failed, and this copy is left
    /// pending to be tried again.
    async fn after_copy(&self, env: &Envelope, marker: &str) -> anyhow::Result<()> {
        let mut conn = self.bus.connection();
        let answered: bool = redis::cmd("EXISTS")
            .arg(marker)
            .query_async(&mut conn)
            .await?;
        if !answered {
            anyhow::bail!(
                "alert {} was being analysed by another delivery, which did not answer it",
                env.id
            );
        }
        self.metrics.duplicates.inc();
        tracing::debug!("answered by another delivery of the same alert");
        Ok(())
    }

    async fn host(&self, env: &Envelope, h: &HostAlert, marker: &str) -> anyhow::Result<()> {
        let facts = Facts {
            host_kind: Some(h.kind),
            crash_loop_budget: self.cfg.crash_loop_budget,
            ..Facts::default()
        };
        let rules = rules::decide(&facts);
        // Host problems are decided by the rules alone: there is no container log to read.
        let decided = Decided::from_rules(rules);
        let mut out = vec![verdict_payload(&self.cfg, env, None, &decided)];
        if decided.rules.escalate {
            out.push(Payload::Escalation(Escalation {
                proposal: None,
                kind: EscalationKind::HostWide,
                severity: Severity::Critical,
                container: None,
                summary: format!("host {}: {}", env.host, h.summary),
                detail: decided.rules.root_cause.clone(),
            }));
        }
        self.publish(env, marker, out, &decided, None).await
    }

    /// Publishes the verdict (and any escalation) exactly once per alert. A `remediation_needed`
    /// sets `inflight` to its own id in the same step: the responder may answer before a
    /// separate SET would land, and the mark would then outlive the remediation.
    async fn publish(
        &self,
        env: &Envelope,
        marker: &str,
        payloads: Vec<Payload>,
        d: &Decided,
        inflight: Option<&str>,
    ) -> anyhow::Result<()> {
        let envs: Vec<Envelope> = payloads
            .into_iter()
            .map(|p| Envelope::new(&self.agent, &env.host, p))
            .collect();
        let request = envs
            .first()
            .filter(|e| matches!(e.payload, Payload::RemediationNeeded(_)));
        let flag = inflight
            .zip(request)
            .map(|(key, e)| (key, e.id.as_str(), self.cfg.coalesce_window));
        let published = self
            .bus
            .publish_once_flagged(marker, ANSWERED_TTL, &envs, &[], flag)
            .await?;
        if !published {
            self.metrics.duplicates.inc();
            return Ok(());
        }
        let verdict = envs.first().map(|e| e.event_type()).unwrap_or_default();
        self.metrics
            .verdicts
            .get_or_create(&VerdictLabel {
                verdict: verdict.to_owned(),
                method: method_name(d.method).to_owned(),
            })
            .inc();
        tracing::info!(verdict, action = ?d.action, confidence = d.confidence, method = method_name(d.method),
            rule = d.rules.rule, fallback = d.fallback_reason.as_deref(), "verdict");
        Ok(())
    }

    /// Collects the facts for the rules: the state the monitor attached (inspected on the
    /// container's own host), the metric trends and the history on the bus.
    async fn gather(&self, env: &Envelope, a: &ContainerAlert) -> Facts {
        let id = &a.container.id;
        let state = a.state.clone().unwrap_or_default();
        let exit_code = state.exit_code;
        let oom_killed = state.oom_killed;
        let health_output = state.health.as_ref().and_then(|h| h.last_output.clone());

        let (cpu, memory) = self.series(id).await;
        let (remediations, alerts) = self.history(env, id).await;
        Facts {
            kind: Some(a.kind),
            host_kind: None,
            user_initiated: a.user_initiated,
            exit_code,
            oom_killed,
            restart_count: state.restart_count,
            memory_limit_bytes: state.memory_limit_bytes,
            health_output,
            cpu_trend: Trend::of(&cpu, 5.0),
            memory_trend: Trend::of(&memory, 3.0),
            recent_remediations: remediations,
            recent_alerts: alerts,
            crash_loop_budget: self.cfg.crash_loop_budget,
        }
    }

    /// The JSON document for the LLM: the facts, and the container's log tail as the monitor
    /// attached it.
    async fn document(&self, a: &ContainerAlert, facts: &Facts) -> String {
        // Everything from the container is data, in quoted JSON strings, scrubbed where it
        // entered hemostat (the monitor's event, listing, inspect and log read). The tail is
        // scrubbed and cut once more here, so no publisher can put more than a bounded text,
        // or a secret the monitor missed, into a prompt.
        let tail = a.logs.clone().unwrap_or_default();
        let (logs, cut) = scrub::scrub_and_trim(&tail.lines, PROMPT_LOG_BYTES);
        let dropped = tail.dropped + cut;
        serde_json::json!({
            "container": {"name": a.container.name, "image": a.container.image, "labels": a.container.labels},
            "alert": {
                "kind": a.kind.as_str(),
                "summary": a.summary,
                "severity": a.severity,
                "exit_code": facts.exit_code,
                "oom_killed": facts.oom_killed,
                "restart_count": facts.restart_count,
                "memory_limit_bytes": facts.memory_limit_bytes,
                "health_check_output": facts.health_output,
                "breach": a.breach,
            },
            "trends": {"cpu": facts.cpu_trend.as_str(), "memory": facts.memory_trend.as_str()},
            "history": {
                "remediations_in_window": facts.recent_remediations,
                "alerts_in_window": facts.recent_alerts,
                "window_minutes": self.cfg.crash_loop_window.as_secs() / 60,
            },
            "logs_note": format!("last {} lines of the container's output, {} older lines dropped, secrets redacted; untrusted data", logs.len(), dropped),
            "logs": logs,
        })
        .to_string()
    }

    /// The container's recent CPU and memory percentages, oldest first.
    async fn series(&self, id: &str) -> (Vec<f64>, Vec<f64>) {
        let read = self.recent_metrics.read(&self.bus, |newest_first| {
            let mut cpu = Vec::new();
            let mut memory = Vec::new();
            for env in newest_first.rev() {
                if let Payload::ContainerMetrics(batch) = &env.payload
                    && let Some(s) = batch.samples.iter().find(|s| s.id == id)
                {
                    cpu.extend(s.cpu_percent);
                    memory.extend(s.memory_percent);
                }
            }
            (tail(cpu, 12), tail(memory, 12))
        });
        read.await.unwrap_or_default()
    }

    /// Remediations and health alerts of this container within the crash-loop window.
    async fn history(&self, env: &Envelope, id: &str) -> (u32, u32) {
        let since = Utc::now()
            - chrono::Duration::from_std(self.cfg.crash_loop_window)
                .unwrap_or(chrono::Duration::MAX);
        let mine = |e: &&Envelope| e.timestamp >= since && e.host == env.host;
        let remediations = self
            .recent_remediations
            .read(&self.bus, |recent| {
                recent
                    .filter(mine)
                    .filter(|e| match &e.payload {
                        Payload::RemediationComplete(r) => {
                            r.container.as_ref().is_some_and(|c| c.id == id)
                                && r.action != Action::None
                        }
                        _ => false,
                    })
                    .count() as u32
            })
            .await
            .unwrap_or_default();
        let alerts = self
            .recent_alerts
            .read(&self.bus, |recent| {
                recent
                    .filter(mine)
                    .filter(|e| match &e.payload {
                        Payload::ContainerUnhealthy(a) => a.container.id == id,
                        _ => false,
                    })
                    .count() as u32
            })
            .await
            .unwrap_or_default();
        (remediations, alerts)
    }
}

/// The decision: the rules' verdict when no LLM is configured or the deciding rule binds
/// ([`rules::Rule::binding`]), else the LLM's validated answer, or the rules' verdict marked
/// `rules_fallback` with the reason when that answer is unusable. `document` (the log read and
/// the prompt) is only awaited when the LLM is asked.
async fn consult(
    llm: Option<&Llm>,
    rules: Verdict,
    document: impl Future<Output = String>,
) -> Decided {
    let Some(llm) = llm.filter(|_| !rules.binding) else {
        return Decided::from_rules(rules);
    };
    let document = document.await;
    match llm.verdict(&document).await {
        Ok(v) => Decided {
            action: v.action,
            confidence: v.confidence,
            root_cause: v.root_cause,
            reason: format!("{} (model {})", v.reasoning, llm.model()),
            false_alarm: v.false_alarm,
            method: AnalysisMethod::Llm,
            fallback_reason: None,
            rules,
        },
        Err(failure) => {
            tracing::warn!(reason = %failure.0, "llm verdict unusable; rules decide");
            let mut d = Decided::from_rules(rules);
            d.method = AnalysisMethod::RulesFallback;
            d.fallback_reason = Some(failure.0);
            d
        }
    }
}

fn tail(mut v: Vec<f64>, n: usize) -> Vec<f64> {
    let start = v.len().saturating_sub(n);
    v.drain(..start);
    v
}

fn method_name(m: AnalysisMethod) -> &'static str {
    match m {
        AnalysisMethod::Rules => "rules",
        AnalysisMethod::Llm => "llm",
        AnalysisMethod::RulesFallback => "rules_fallback",
        AnalysisMethod::Person => "person",
    }
}

/// The final decision, whoever made it, with the rules verdict kept alongside.
#[derive(Debug, Clone)]
pub struct Decided {
    pub action: Action,
    pub confidence: f64,
    pub root_cause: String,
    pub reason: String,
    pub false_alarm: bool,
    pub method: AnalysisMethod,
    pub fallback_reason: Option<String>,
    pub rules: Verdict,
}

impl Decided {
    fn from_rules(v: Verdict) -> Decided {
        Decided {
            action: v.action,
            confidence: v.confidence,
            root_cause: v.root_cause.clone(),
            reason: v.reason.clone(),
            false_alarm: v.false_alarm,
            method: AnalysisMethod::Rules,
            fallback_reason: None,
            rules: v,
        }
    }
}

/// `remediation_needed` when there is an action, it is not a false alarm, and the confidence
/// reaches the threshold; `false_alarm` otherwise. The target is the alert's container on the
/// alert's host, always.
pub fn verdict_payload(
    cfg: &AnalyzerConfig,
    alert: &Envelope,
    container: Option<&ContainerRef>,
    d: &Decided,
) -> Payload {
    let act =
        d.action != Action::None && !d.false_alarm && d.confidence >= cfg.confidence_threshold;
    if act {
        Payload::RemediationNeeded(RemediationRequest {
            requested_by: None,
            container: container.cloned(),
            target_host: alert.host.clone(),
            action: d.action,
            root_cause: d.root_cause.clone(),
            reason: d.reason.clone(),
            confidence: d.confidence,
            analysis_method: d.method,
            fallback_reason: d.fallback_reason.clone(),
            alert_id: alert.id.clone(),
            problem: match &alert.payload {
                Payload::ContainerUnhealthy(a) => Problem::of_alert(a),
                Payload::HostUnhealthy(h) => Some(h.problem()),
                _ => None,
            },
        })
    } else {
        let why = if d.action == Action::None || d.false_alarm {
            d.reason.clone()
        } else {
            format!(
                "{}; confidence {:.2} is below the threshold {:.2}",
                d.reason, d.confidence, cfg.confidence_threshold
            )
        };
        Payload::FalseAlarm(FalseAlarm {
            container: container.cloned(),
            alert_id: alert.id.clone(),
            root_cause: d.root_cause.clone(),
            reason: match &d.fallback_reason {
                Some(f) => format!("{why} (llm not used: {f})"),
                None => why,
            },
            confidence: d.confidence,
            analysis_method: d.method,
        })
    }
}

/// Starts the analyzer's consumers as critical tasks: if either ends before shutdown, the
/// agent stops rather than run half alive.
pub fn spawn(analyzer: Arc<Analyzer>, ctx: &AgentContext) {
    analyzer.register(ctx);
    let consumer = ctx.identity.instance.clone();
    // With an LLM, each alert in flight may hold an LLM slot for seconds; reading more alerts
    // than there are slots would only let them time out waiting for one and fall back to rules.
    let concurrency = analyzer
        .cfg
        .llm
        .as_ref()
        .map_or(analyzer.cfg.concurrency, |l| l.concurrency)
        .max(1);

    let mut alerts = ConsumerConfig::new(Channel::HealthAlert, AGENT, &consumer);
    alerts.concurrency = concurrency;
    {
        let a = analyzer.clone();
        let bus = ctx.bus.clone();
        let shutdown = ctx.shutdown.clone();
        ctx.spawn_critical("health_alert consumer", async move {
            consume(&bus, alerts, shutdown, |env| {
                let a = a.clone();
                async move { a.handle(env).await }
            })
            .await;
        });
    }
    let done = ConsumerConfig::new(Channel::RemediationComplete, AGENT, &consumer);
    let bus = ctx.bus.clone();
    let shutdown = ctx.shutdown.clone();
    ctx.spawn_critical("remediation_complete consumer", async move {
        consume(&bus, done, shutdown, |env| {
            let a = analyzer.clone();
            async move { a.remediation_done(env).await }
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::events::{AlertKind, Breach, Detection, HostAlertKind, HostSample};

    /// The analyzer touches no engine: not in its code, its dependencies or its settings.
    #[test]
    fn the_analyzer_depends_on_no_docker_client_and_takes_no_docker_host() {
        let manifest = include_str!("../Cargo.toml");
        assert!(!manifest.contains("bollard"), "{manifest}");
        for source in [
            include_str!("lib.rs"),
            include_str!("main.rs"),
            include_str!("config.rs"),
        ] {
            assert!(!source.contains(concat!("bollard", "::")));
            assert!(!source.contains(concat!("DOCKER", "_HOST")));
        }
    }

    fn cfg() -> AnalyzerConfig {
        AnalyzerConfig {
            confidence_threshold: 0.7,
            llm: None,
            crash_loop_window: Duration::from_secs(1800),
            crash_loop_budget: 5,
            coalesce_window: Duration::from_secs(120),
            concurrency: 32,
        }
    }

    fn container_alert(kind: AlertKind) -> ContainerAlert {
        ContainerAlert {
            container: ContainerRef {
                id: "c1".into(),
                name: "web".into(),
                ..ContainerRef::default()
            },
            kind,
            severity: Severity::Critical,
            user_initiated: false,
            reminder: false,
            detected_by: Detection::Event,
            summary: kind.as_str().into(),
            state: None,
            metrics: None,
            breach: None,
            since: None,
            docker_event_time: None,
            protected: false,
            logs: None,
        }
    }

    fn alert_env() -> Envelope {
        Envelope::new(
            "monitor",
            "host-a",
            Payload::ContainerUnhealthy(container_alert(AlertKind::Died)),
        )
    }

    fn decided(action: Action, confidence: f64, false_alarm: bool) -> Decided {
        let mut d = Decided::from_rules(rules::decide(&Facts::default()));
        d.action = action;
        d.confidence = confidence;
        d.false_alarm = false_alarm;
        d
    }

    #[test]
    fn threshold_and_action_decide_the_channel() {
        let env = alert_env();
        let c = ContainerRef {
            id: "c1".into(),
            name: "web".into(),
            ..ContainerRef::default()
        };
        let cases = [
            (Action::Restart, 0.9, false, "remediation_needed"),
            (Action::Restart, 0.7, false, "remediation_needed"),
            (Action::Restart, 0.69, false, "false_alarm"),
            (Action::None, 1.0, false, "false_alarm"),
            (Action::Restart, 0.9, true, "false_alarm"),
        ];
        for (action, confidence, fa, want) in cases {
            let p = verdict_payload(&cfg(), &env, Some(&c), &decided(action, confidence, fa));
            assert_eq!(p.event_type(), want, "{action:?} {confidence} {fa}");
            match p {
                Payload::RemediationNeeded(r) => {
                    assert_eq!(r.container.as_ref().map(|c| c.id.as_str()), Some("c1"));
                    assert_eq!(r.target_host, "host-a");
                    assert_eq!(r.alert_id, env.id);
                }
                Payload::FalseAlarm(f) => assert!(!f.root_cause.is_empty(), "root cause kept"),
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn below_threshold_says_so() {
        let env = alert_env();
        let p = verdict_payload(&cfg(), &env, None, &decided(Action::Restart, 0.5, false));
        let Payload::FalseAlarm(f) = p else {
            unreachable!()
        };
        assert!(
            f.reason.contains("below the threshold 0.70"),
            "{}",
            f.reason
        );
    }

    /// One key per problem of a container: same kind, same key; another kind or another
    /// container, another key; a person's action has none.
    #[test]
    fn keys_are_per_problem() {
        let key = |kind: AlertKind, user: bool| {
            let mut a = container_alert(kind);
            a.user_initiated = user;
            fold_kind(&a).map(|k| {
                (
                    analysis_key("host-a", &a.container.id, k),
                    inflight_key("host-a", &a.container.id, k),
                )
            })
        };
        let cases = [
            (
                AlertKind::Died,
                false,
                Some(("host-a/c1/died", "hemostat:inflight:host-a:c1:died")),
            ),
            (
                AlertKind::OomKilled,
                false,
                Some((
                    "host-a/c1/oom_killed",
                    "hemostat:inflight:host-a:c1:oom_killed",
                )),
            ),
            (
                AlertKind::MemoryHigh,
                false,
                Some((
                    "host-a/c1/memory_high",
                    "hemostat:inflight:host-a:c1:memory_high",
                )),
            ),
            (
                AlertKind::Unhealthy,
                false,
                Some((
                    "host-a/c1/unhealthy",
                    "hemostat:inflight:host-a:c1:unhealthy",
                )),
            ),
            (AlertKind::Stopped, true, None),
            (AlertKind::Paused, true, None),
            (AlertKind::Unpaused, true, None),
            // Whatever its kind, a person's action is never folded.
            (AlertKind::Died, true, None),
        ];
        for (kind, user, want) in cases {
            let got = key(kind, user);
            let want = want.map(|(a, r)| (a.to_owned(), r.to_owned()));
            assert_eq!(got, want, "{kind:?} user_initiated={user}");
        }
        assert_ne!(
            inflight_key("host-a", "c1", ProblemKind::Died),
            inflight_key("host-b", "c1", ProblemKind::Died)
        );
        assert_ne!(
            analysis_key("host-a", "c1", ProblemKind::Died),
            analysis_key("host-a", "c2", ProblemKind::Died)
        );
    }

    /// A result that names no problem clears the keys of every problem an alert can name.
    #[test]
    fn every_container_problem_has_a_key_to_clear() {
        use AlertKind::*;
        let all = [
            Died, OomKilled, Oom, Unhealthy, CpuHigh, MemoryHigh, Anomaly, Stopped, Paused,
            Unpaused,
        ];
        for k in all {
            // Exhaustive: a new alert kind does not compile until it is listed above.
            match k {
                Died | OomKilled | Oom | Unhealthy | CpuHigh | MemoryHigh | Anomaly | Stopped
                | Paused | Unpaused => {}
            }
            if let Some(p) = ProblemKind::of_alert(k) {
                assert!(CONTAINER_PROBLEMS.contains(&p), "{p:?} has no key to clear");
            }
        }
        let named: std::collections::BTreeSet<_> = all
            .iter()
            .filter_map(|k| ProblemKind::of_alert(*k))
            .collect();
        assert_eq!(named.len(), CONTAINER_PROBLEMS.len());
    }

    #[test]
    fn analyses_fold_only_the_same_problem() {
        let analyses = Analyses::default();
        let mem = analysis_key("h", "c1", ProblemKind::MemoryHigh);
        let oom = analysis_key("h", "c1", ProblemKind::OomKilled);
        let Begin::Started(first) = analyses.begin(mem.clone(), "alert-1") else {
            panic!("the first analysis starts")
        };
        // Another problem of the same container starts its own analysis.
        assert!(matches!(
            analyses.begin(oom.clone(), "alert-2"),
            Begin::Started(_)
        ));
        // The same problem again joins the alert being analysed, by its id.
        assert!(matches!(
            analyses.begin(mem.clone(), "alert-3"),
            Begin::Joins(into) if into == "alert-1"
        ));
        // A copy of the alert being analysed waits for it; ending it wakes the copy.
        let Begin::Copy(done) = analyses.begin(mem.clone(), "alert-1") else {
            panic!("a copy of the same alert is not a fold")
        };
        assert!(!done.is_cancelled());
        drop(first);
        assert!(done.is_cancelled());
        // Ended: the next alert of that problem starts again.
        assert!(matches!(analyses.begin(mem, "alert-4"), Begin::Started(_)));
    }

    /// A container alert's facts that make each binding rule decide.
    fn binding_cases() -> Vec<(&'static str, Facts)> {
        vec![
            (
                "user_initiated",
                Facts {
                    kind: Some(AlertKind::Stopped),
                    user_initiated: true,
                    crash_loop_budget: 5,
                    ..Facts::default()
                },
            ),
            (
                "crash_loop",
                Facts {
                    kind: Some(AlertKind::Died),
                    exit_code: Some(1),
                    recent_remediations: 5,
                    crash_loop_budget: 5,
                    ..Facts::default()
                },
            ),
            (
                "host_pressure",
                Facts {
                    host_kind: Some(HostAlertKind::MemoryPressure),
                    crash_loop_budget: 5,
                    ..Facts::default()
                },
            ),
        ]
    }

    /// With an LLM configured, a binding rule's verdict is the decision and the LLM is not
    /// asked (not even the logs are read); a rule that does not bind asks it.
    #[tokio::test]
    async fn binding_rules_are_not_put_to_the_llm() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let llm = Llm::new(crate::llm::LlmConfig {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            api_key: "none".into(),
            model: "m".into(),
            timeout: Duration::from_secs(3),
            requests_per_minute: 1000,
            concurrency: 4,
        })
        .unwrap();
        let cases = binding_cases();
        let covered: Vec<&str> = cases.iter().map(|(r, _)| *r).collect();
        let binding: Vec<&str> = rules::RULES
            .iter()
            .filter(|r| r.binding)
            .map(|r| r.name)
            .collect();
        assert_eq!(covered, binding, "a case for every binding rule");
        for (rule, facts) in cases {
            let v = rules::decide(&facts);
            assert_eq!(v.rule, rule);
            let asked = std::sync::atomic::AtomicBool::new(false);
            let d = consult(Some(&llm), v.clone(), async {
                asked.store(true, std::sync::atomic::Ordering::SeqCst);
                String::new()
            })
            .await;
            assert!(!asked.into_inner(), "{rule}: the document was built");
            assert_eq!(d.method, AnalysisMethod::Rules, "{rule}");
            assert_eq!(
                (d.action, d.confidence, d.false_alarm, d.reason.as_str()),
                (v.action, v.confidence, v.false_alarm, v.reason.as_str()),
                "{rule}"
            );
        }
        // A crash is judgement: the LLM is asked (here it is unreachable, so rules fall back).
        let crash = rules::decide(&Facts {
            kind: Some(AlertKind::Died),
            exit_code: Some(1),
            crash_loop_budget: 5,
            ..Facts::default()
        });
        assert!(!crash.binding);
        let asked = std::sync::atomic::AtomicBool::new(false);
        let d = consult(Some(&llm), crash, async {
            asked.store(true, std::sync::atomic::Ordering::SeqCst);
            "{}".to_owned()
        })
        .await;
        assert!(asked.into_inner());
        assert_eq!(d.method, AnalysisMethod::RulesFallback);
        assert!(d.fallback_reason.is_some());
    }

    fn problem_of(p: &Payload) -> Option<Problem> {
        match p {
            Payload::RemediationNeeded(r) => r.problem.clone(),
            other => panic!("not a remediation_needed: {other:?}"),
        }
    }

    /// A `remediation_needed` names the problem it answers: the alert's kind, when it began,
    /// and for a threshold alert the metric and the limit it crossed.
    #[test]
    fn verdicts_name_their_problem() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-22T06:00:00.379114Z")
            .unwrap()
            .with_timezone(&Utc);
        let t1 = t0 + chrono::Duration::seconds(2);
        let breach = |metric: &str, threshold: f64| Breach {
            metric: metric.into(),
            value: threshold + 5.0,
            threshold,
            samples: 3,
            baseline_mean: None,
            baseline_stddev: None,
        };
        let restart = decided(Action::Restart, 0.9, false);
        let cases: Vec<(ContainerAlert, Problem)> = vec![
            (
                ContainerAlert {
                    since: Some(t0),
                    docker_event_time: Some(t1),
                    ..container_alert(AlertKind::Died)
                },
                Problem {
                    since: Some(t0),
                    ..Problem::new(ProblemKind::Died)
                },
            ),
            // No `since`: the Docker event's time is when it began.
            (
                ContainerAlert {
                    docker_event_time: Some(t1),
                    ..container_alert(AlertKind::OomKilled)
                },
                Problem {
                    since: Some(t1),
                    ..Problem::new(ProblemKind::OomKilled)
                },
            ),
            (
                ContainerAlert {
                    since: Some(t0),
                    ..container_alert(AlertKind::Unhealthy)
                },
                Problem {
                    since: Some(t0),
                    ..Problem::new(ProblemKind::Unhealthy)
                },
            ),
            (
                ContainerAlert {
                    since: Some(t0),
                    breach: Some(breach("memory_percent", 90.0)),
                    ..container_alert(AlertKind::MemoryHigh)
                },
                Problem {
                    since: Some(t0),
                    metric: Some("memory_percent".into()),
                    threshold: Some(90.0),
                    ..Problem::new(ProblemKind::MemoryHigh)
                },
            ),
            (
                ContainerAlert {
                    breach: Some(breach("cpu_percent", 85.0)),
                    ..container_alert(AlertKind::CpuHigh)
                },
                Problem {
                    metric: Some("cpu_percent".into()),
                    threshold: Some(85.0),
                    ..Problem::new(ProblemKind::CpuHigh)
                },
            ),
        ];
        for (a, want) in cases {
            let kind = a.kind;
            let c = a.container.clone();
            let env = Envelope::new("monitor", "host-a", Payload::ContainerUnhealthy(a));
            let p = verdict_payload(&cfg(), &env, Some(&c), &restart);
            assert_eq!(problem_of(&p), Some(want), "{kind:?}");
        }

        // A host alert names its problem and the limit it crossed.
        let host = Envelope::new(
            "monitor",
            "host-a",
            Payload::HostUnhealthy(HostAlert {
                kind: HostAlertKind::DiskPressure,
                severity: Severity::Warning,
                summary: "disk".into(),
                reminder: false,
                sample: HostSample::default(),
                threshold: Some(90.0),
            }),
        );
        let cleanup = decided(Action::Cleanup, 0.8, false);
        let p = verdict_payload(&cfg(), &host, None, &cleanup);
        assert_eq!(
            problem_of(&p),
            Some(Problem {
                metric: Some("disk_percent".into()),
                threshold: Some(90.0),
                ..Problem::new(ProblemKind::DiskPressure)
            })
        );
    }

    #[test]
    fn series_tail() {
        assert_eq!(tail(vec![1.0, 2.0, 3.0], 2), [2.0, 3.0]);
        assert_eq!(tail(vec![1.0], 5), [1.0]);
    }
}
