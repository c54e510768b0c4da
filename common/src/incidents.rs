//! Incidents: one episode of trouble of one container (or of a whole host), from its first alert
//! until a verified recovery that held for a quiet period, or until a person closes it.
//!
//! Everything here is pure. The component that keeps incidents reads the bus streams, looks the
//! current incident up by [`key_of`], and hands it to [`apply`] with each envelope; the time is
//! always the envelope's own timestamp or an explicit `now`, and nothing reads a clock, Redis or
//! Docker. That makes the state machine deterministic and testable with made-up envelopes, and it
//! lets the same functions rebuild an incident from a replay of the streams. The rest of the
//! module turns incidents into words and numbers: runbook [`advice`], a [`history_line`] of what
//! hemostat did before, a Markdown [`postmortem`], and [`reliability`] figures.
//!
//! The states: `open` (failing now), `mitigated` (recovered, waiting out the quiet period),
//! `resolved` (over), `escalated` (a person is needed). A relapse within the quiet period
//! reopens the same incident, so a crash loop is one incident, not one per crash.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::events::{
    Action, AnalysisMethod, ContainerAlert, ContainerRef, Envelope, Escalation, EscalationKind,
    FalseAlarm, Guard, Outcome, Payload, ProblemKind, RemediationRequest, RemediationResult,
    Severity,
};

/// The most timeline entries a caller should keep per incident. A crash-looping container adds
/// a handful of entries per crash (alert, verdict, result, recovery), so 200 hold hours of one,
/// while the list kept in Redis and the postmortem rendered from it stay small enough to read in
/// one go. The cap is the caller's to enforce, since it stores the timeline; [`postmortem`]
/// renders at most this many rows.
pub const TIMELINE_MAX: usize = 200;

/// The most container names a host-wide incident lists. A storm on a large host can involve
/// hundreds of containers; the list is for people and notifications, where a few dozen names
/// already say "everything", and an unbounded list would let one storm bloat every copy of the
/// incident. The first 50 by name are kept, so the list is the same whatever the arrival order.
pub const CONTAINERS_MAX: usize = 50;

/// The longest summary of a timeline entry, in characters (longer ones end with `…`). Entries
/// are shown one per line in tables and chat messages, where a longer text only gets in the way.
pub const SUMMARY_MAX_CHARS: usize = 300;

/// The longest root cause kept, in characters. An LLM's explanation can run long; the first
/// thousand characters say what it found.
pub const ROOT_CAUSE_MAX_CHARS: usize = 1000;

/// The container part of a host-wide incident's key (`<host>/-`).
pub const HOST_WIDE: &str = "-";

/// The kind of a host incident opened by a storm, and the open problem it stands for.
const STORM: &str = "storm";

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Failing now.
    Open,
    /// Recovered (a verified remediation, or the monitor saw it recover), waiting out the quiet
    /// period before it counts as over.
    Mitigated,
    /// Over: the quiet period passed with no relapse, or a person closed it.
    Resolved,
    /// A person is needed: the circuit breaker opened, a crash loop, a failed remediation, a
    /// protected container, or a host problem hemostat cannot fix.
    Escalated,
}

impl IncidentState {
    /// The wire name, e.g. `mitigated`.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Mitigated => "mitigated",
            IncidentState::Resolved => "resolved",
            IncidentState::Escalated => "escalated",
        }
    }
}

/// Who decided, did or said what a timeline entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The monitor: alerts and recoveries.
    Monitor,
    /// The analyzer's rules (including the fallback when the LLM's answer was unusable), and
    /// hemostat's own bookkeeping such as the end of the quiet period.
    Rule,
    /// The analyzer's LLM.
    Llm,
    /// One of the responder's safety guards: refusals, the breaker, a storm hold.
    Guard,
    /// A person: a stop or pause, a "restart now", an approval, closing the incident.
    Person,
    /// The responder, acting on Docker and verifying the result.
    Responder,
    /// Docker itself, e.g. its restart policy. No envelope names Docker as the one who acted, so
    /// [`apply`] never uses it; it is there for callers that learn of Docker's own actions.
    Docker,
}

impl Actor {
    /// The wire name, e.g. `responder`.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Monitor => "monitor",
            Actor::Rule => "rule",
            Actor::Llm => "llm",
            Actor::Guard => "guard",
            Actor::Person => "person",
            Actor::Responder => "responder",
            Actor::Docker => "docker",
        }
    }
}

/// One thing that happened in an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// The envelope's timestamp (or the explicit time of [`due`] and [`close`]).
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// What happened, as a short machine-readable tag: `alert:died`, `reminder:died`,
    /// `verdict:restart`, `person:restart`, `false_alarm`, `result:success`, `result:failed`,
    /// `superseded`, `dry_run`, `skipped`, `skipped:problem`, `refused:<guard>`,
    /// `escalation:<kind>`, `approval_needed`, `recovered`, `cleared:<kind>`, `person:stopped`,
    /// `storm_over`, `resolved`, `closed`.
    pub kind: String,
    /// One line of at most [`SUMMARY_MAX_CHARS`] characters.
    pub summary: String,
    /// The envelope this entry comes from; empty for [`due`], [`close`] and [`storm_over`].
    pub envelope_id: String,
}

/// One episode of trouble of one container, or of a whole host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    /// `<host>/<container name>`, or `<host>/-` for a host-wide incident.
    pub key: String,
    pub host: String,
    /// The container's name; `None` for a host-wide incident.
    pub container: Option<String>,
    /// What opened it: `died`, `oom_killed`, `oom`, `unhealthy`, `cpu_high`, `memory_high`,
    /// `anomaly`, `disk_pressure`, `memory_pressure`, `cpu_pressure`, `storm`, or the
    /// escalation kind when an escalation came with no incident open (`circuit_breaker_open`,
    /// `crash_loop`, `remediation_failed`, `protected_container`, `host_wide`).
    pub kind: String,
    /// The worst severity seen in its alerts and escalations.
    pub severity: Severity,
    pub state: IncidentState,
    /// When the problem began: the first alert's `since`, else its `docker_event_time`, else
    /// the envelope's timestamp.
    pub detected_at: DateTime<Utc>,
    /// The first remediation that reached Docker.
    pub first_action_at: Option<DateTime<Utc>>,
    /// The latest recovery (a verified remediation, or the monitor's word); cleared by a
    /// relapse, so it is the recovery that ended the downtime.
    pub recovered_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The first escalation.
    pub escalated_at: Option<DateTime<Utc>>,
    /// The person who closed it, when one did.
    pub closed_by: Option<String>,
    /// The containers involved: the container itself, or for a host-wide incident the ones the
    /// caller named (sorted, deduplicated, at most [`CONTAINERS_MAX`]).
    pub containers: Vec<String>,
    /// Failure alerts, reminders included.
    pub alerts: u32,
    /// Remediations that reached Docker: `success`, `failed` and `superseded` results, dry runs
    /// excluded.
    pub actions: u32,
    /// Results a guard refused or skipped (except the `problem` guard, which means it recovered).
    pub refusals: u32,
    /// The first non-empty root cause of an analyzer's verdict.
    pub root_cause: Option<String>,
    /// The latest envelope timestamp applied.
    pub last_event_at: DateTime<Utc>,
    /// When a mitigated incident resolves if nothing else happens.
    pub resolve_at: Option<DateTime<Utc>>,
    /// The container's memory limit, from the latest alert that carried one.
    pub memory_limit_bytes: Option<u64>,
    /// The container's exit code, from the latest alert that carried one.
    pub exit_code: Option<i64>,
    /// The problems alerted and not yet recovered (`died`, `unhealthy`, `storm`, ...), sorted:
    /// a recovery of one problem mitigates the incident only once none is left, so a
    /// `memory_high` that clears because the container died does not count as a recovery.
    /// `oom` is never listed: nothing reports its end.
    #[serde(default)]
    pub open_problems: Vec<String>,
    /// The action of the latest remediation that reached Docker (`restart`, `stop`, ...).
    #[serde(default)]
    pub last_action: Option<String>,
    /// The latest escalation that called a person (`circuit_breaker_open`, `crash_loop`, ...).
    #[serde(default)]
    pub escalation: Option<String>,
}

/// What the incident functions need besides the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentConfig {
    /// How long a recovery must hold before the incident is resolved.
    pub quiet: std::time::Duration,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        IncidentConfig {
            quiet: std::time::Duration::from_secs(600),
        }
    }
}

/// What [`apply`] made of an envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A new incident, with its first timeline entry.
    Opened(Incident, TimelineEntry),
    /// The current incident, changed, with the entry to append.
    Updated(Incident, TimelineEntry),
    /// Nothing to record.
    Ignored,
}

impl Applied {
    /// The incident, unless ignored.
    pub fn incident(&self) -> Option<&Incident> {
        match self {
            Applied::Opened(i, _) | Applied::Updated(i, _) => Some(i),
            Applied::Ignored => None,
        }
    }

    /// The timeline entry, unless ignored.
    pub fn entry(&self) -> Option<&TimelineEntry> {
        match self {
            Applied::Opened(_, e) | Applied::Updated(_, e) => Some(e),
            Applied::Ignored => None,
        }
    }

    /// The incident and its entry, unless ignored.
    pub fn into_parts(self) -> Option<(Incident, TimelineEntry)> {
        match self {
            Applied::Opened(i, e) | Applied::Updated(i, e) => Some((i, e)),
            Applied::Ignored => None,
        }
    }
}

/// The key of the incident of `container` on `host`: `<host>/<name>`, or `<host>/-`.
pub fn incident_key(host: &str, container: Option<&str>) -> String {
    format!("{host}/{}", container.unwrap_or(HOST_WIDE))
}

/// Which incident an envelope belongs to: `(key, host, container name)`.
///
/// Containers are keyed by name, not id, because Compose recreates a container under the same
/// name with a new id, and it is still the same service in trouble (a nameless reference falls
/// back to the id). The host is the envelope's, except for `remediation_needed` and
/// `person_request`, which name their `target_host`. Host alerts, storms
/// (`remediation_paused`), host-wide escalations and anything else without a container
/// (a `cleanup` request and its result, a false alarm about a host alert) belong to the host's
/// incident, `<host>/-`. Heartbeats, metrics and `alert_folded` records belong to none: a folded
/// alert is already counted from the health-alert stream.
pub fn key_of(env: &Envelope) -> Option<(String, String, Option<String>)> {
    let (host, container): (&str, Option<&ContainerRef>) = match &env.payload {
        Payload::ContainerUnhealthy(a)
        | Payload::ContainerUserAction(a)
        | Payload::ContainerRecovered(a) => (&env.host, Some(&a.container)),
        Payload::HostUnhealthy(_) | Payload::HostRecovered(_) => (&env.host, None),
        Payload::RemediationNeeded(r) | Payload::PersonRequest(r) => {
            let host = if r.target_host.is_empty() {
                &env.host
            } else {
                &r.target_host
            };
            (host, r.container.as_ref())
        }
        Payload::FalseAlarm(f) => (&env.host, f.container.as_ref()),
        Payload::RemediationComplete(r) => (&env.host, r.container.as_ref()),
        Payload::Escalation(e) => match e.kind {
            EscalationKind::RemediationPaused | EscalationKind::HostWide => (&env.host, None),
            _ => (&env.host, e.container.as_ref()),
        },
        Payload::AlertFolded(_)
        | Payload::ContainerMetrics(_)
        | Payload::HostMetrics(_)
        | Payload::Heartbeat(_) => return None,
    };
    let container = container.map(name_of);
    Some((
        incident_key(host, container.as_deref()),
        host.to_owned(),
        container,
    ))
}

/// Applies one envelope to the current incident of its key (see [`apply_storm`]; this is it
/// with no containers involved).
pub fn apply(
    current: Option<&Incident>,
    env: &Envelope,
    cfg: &IncidentConfig,
    new_id: impl FnOnce() -> String,
) -> Applied {
    apply_storm(current, env, &[], cfg, new_id)
}

/// Applies one envelope to the current incident of its key (`current` is what the caller holds
/// under [`key_of`]`(env)`; a `current` with another key is left alone). `involved` names the
/// host's containers that have an open incident right now: a storm (`remediation_paused`) or a
/// `host_wide` escalation lists them on the host incident, and every other envelope ignores it.
/// `new_id` is called only when an incident opens.
///
/// A resolved `current` is as good as none: a failure opens a new incident, anything else is
/// ignored. The caller feeds each envelope once, in stream order.
pub fn apply_storm(
    current: Option<&Incident>,
    env: &Envelope,
    involved: &[String],
    cfg: &IncidentConfig,
    new_id: impl FnOnce() -> String,
) -> Applied {
    let Some((key, host, container)) = key_of(env) else {
        return Applied::Ignored;
    };
    if current.is_some_and(|c| c.key != key) {
        return Applied::Ignored;
    }
    let live = current.filter(|c| c.state != IncidentState::Resolved);
    let place = Place {
        key,
        host,
        container,
    };
    match &env.payload {
        Payload::ContainerUnhealthy(a) if is_failure(a) => {
            let failure = Failure {
                kind: a.kind.as_str(),
                severity: a.severity,
                reminder: a.reminder,
                detected_at: a.since.or(a.docker_event_time).unwrap_or(env.timestamp),
                summary: &a.summary,
                memory_limit_bytes: a
                    .state
                    .as_ref()
                    .and_then(|s| s.memory_limit_bytes)
                    .or_else(|| a.metrics.as_ref().and_then(|m| m.memory_limit_bytes)),
                exit_code: a.state.as_ref().and_then(|s| s.exit_code),
            };
            on_failure(live, env, place, &failure, new_id)
        }
        Payload::ContainerUnhealthy(a) | Payload::ContainerUserAction(a) => {
            on_user_action(live, env, a)
        }
        Payload::HostUnhealthy(h) => {
            let failure = Failure {
                kind: ProblemKind::of_host(h.kind).as_str(),
                severity: h.severity,
                reminder: h.reminder,
                detected_at: env.timestamp,
                summary: &h.summary,
                memory_limit_bytes: None,
                exit_code: None,
            };
            on_failure(live, env, place, &failure, new_id)
        }
        Payload::ContainerRecovered(a) => on_recovery(live, env, a.kind.as_str(), &a.summary, cfg),
        Payload::HostRecovered(h) => on_recovery(
            live,
            env,
            ProblemKind::of_host(h.kind).as_str(),
            &h.summary,
            cfg,
        ),
        Payload::RemediationNeeded(r) => on_request(live, env, r, false),
        Payload::PersonRequest(r) => on_request(live, env, r, true),
        Payload::FalseAlarm(f) => on_false_alarm(live, env, f),
        Payload::RemediationComplete(r) => on_result(live, env, r, cfg),
        Payload::Escalation(e) => on_escalation(live, env, e, involved, place, new_id),
        Payload::AlertFolded(_)
        | Payload::ContainerMetrics(_)
        | Payload::HostMetrics(_)
        | Payload::Heartbeat(_) => Applied::Ignored,
    }
}

/// Resolves a mitigated incident whose quiet period is over (`resolve_at <= now`); the
/// resolution is dated `resolve_at`, not `now`, so a late check does not stretch the incident.
pub fn due(inc: &Incident, now: DateTime<Utc>) -> Option<(Incident, TimelineEntry)> {
    if inc.state != IncidentState::Mitigated {
        return None;
    }
    let at = inc.resolve_at.filter(|&at| at <= now)?;
    let mut out = inc.clone();
    out.state = IncidentState::Resolved;
    out.resolved_at = Some(at);
    out.resolve_at = None;
    out.open_problems.clear();
    out.last_event_at = out.last_event_at.max(at);
    let entry = TimelineEntry {
        at,
        actor: Actor::Rule,
        kind: "resolved".into(),
        summary: "the recovery held through the quiet period".into(),
        envelope_id: String::new(),
    };
    Some((out, entry))
}

/// A person closes an incident that is not resolved yet. `None` when it already is.
pub fn close(inc: &Incident, by: &str, now: DateTime<Utc>) -> Option<(Incident, TimelineEntry)> {
    if inc.state == IncidentState::Resolved {
        return None;
    }
    let by = one_line(by, 100);
    let by = if by.is_empty() {
        "someone".to_owned()
    } else {
        by
    };
    let mut out = inc.clone();
    out.state = IncidentState::Resolved;
    out.resolved_at = Some(now);
    out.resolve_at = None;
    out.open_problems.clear();
    out.closed_by = Some(by.clone());
    out.last_event_at = out.last_event_at.max(now);
    let entry = TimelineEntry {
        at: now,
        actor: Actor::Person,
        kind: "closed".into(),
        summary: one_line(&format!("closed by {by}"), SUMMARY_MAX_CHARS),
        envelope_id: String::new(),
    };
    Some((out, entry))
}

/// Ends the storm of a host incident once none of its containers is still failing: `failing`
/// is what the caller knows has an open (or escalated) incident right now. The storm problem is
/// cleared, and if nothing else is wrong with the host the incident is mitigated as of `now`.
/// `None` when the incident has no storm going on, or some of its containers still fail.
pub fn storm_over(
    inc: &Incident,
    failing: &[String],
    now: DateTime<Utc>,
    cfg: &IncidentConfig,
) -> Option<(Incident, TimelineEntry)> {
    if !matches!(inc.state, IncidentState::Open | IncidentState::Escalated)
        || !inc.open_problems.iter().any(|p| p == STORM)
        || inc.containers.iter().any(|c| failing.contains(c))
    {
        return None;
    }
    let mut out = inc.clone();
    out.last_event_at = out.last_event_at.max(now);
    let mitigated = clear_problem(&mut out, Some(STORM), now, cfg);
    let summary = if mitigated {
        "none of the storm's containers is failing any more"
    } else {
        "the storm is over; the host still has other problems"
    };
    let entry = TimelineEntry {
        at: now,
        actor: Actor::Rule,
        kind: "storm_over".into(),
        summary: summary.into(),
        envelope_id: String::new(),
    };
    Some((out, entry))
}

/// Where an envelope's incident lives.
struct Place {
    key: String,
    host: String,
    container: Option<String>,
}

/// The facts of a failure alert that an incident keeps.
struct Failure<'a> {
    kind: &'a str,
    severity: Severity,
    reminder: bool,
    detected_at: DateTime<Utc>,
    summary: &'a str,
    memory_limit_bytes: Option<u64>,
    exit_code: Option<i64>,
}

/// A container alert that reports a failure, rather than a person's action.
fn is_failure(a: &ContainerAlert) -> bool {
    !a.user_initiated && ProblemKind::of_alert(a.kind).is_some()
}

/// A container's name without Docker's leading `/`, or its id when it has no name.
fn name_of(c: &ContainerRef) -> String {
    let name = c.name.trim_start_matches('/');
    if name.is_empty() {
        c.id.clone()
    } else {
        name.to_owned()
    }
}

/// Whether the end of a problem of this kind is ever reported. An `oom` inside a container that
/// keeps running is a single event with no recovery, so waiting for one would keep the incident
/// open forever.
fn has_recovery(kind: &str) -> bool {
    kind != "oom"
}

fn add_problem(inc: &mut Incident, kind: &str) {
    if has_recovery(kind) && !inc.open_problems.iter().any(|p| p == kind) {
        inc.open_problems.push(kind.to_owned());
        inc.open_problems.sort();
    }
}

/// Clears one problem (or all, for `None`); when none is left, an open or escalated incident is
/// mitigated as of `at`. Returns whether it was.
fn clear_problem(
    inc: &mut Incident,
    kind: Option<&str>,
    at: DateTime<Utc>,
    cfg: &IncidentConfig,
) -> bool {
    match kind {
        Some(k) => inc.open_problems.retain(|p| p != k),
        None => inc.open_problems.clear(),
    }
    if matches!(inc.state, IncidentState::Open | IncidentState::Escalated)
        && inc.open_problems.is_empty()
    {
        mitigate(inc, at, cfg);
        true
    } else {
        false
    }
}

/// Marks an incident recovered at `at` and starts its quiet period. A recovery already recorded
/// is kept: it is the earlier evidence that the container runs again.
fn mitigate(inc: &mut Incident, at: DateTime<Utc>, cfg: &IncidentConfig) {
    inc.state = IncidentState::Mitigated;
    inc.open_problems.clear();
    let recovered = *inc.recovered_at.get_or_insert(at);
    inc.resolve_at = Some(add(recovered, cfg.quiet));
}

/// A relapse of a mitigated incident: it fails again within its quiet period. An incident that
/// was escalated goes back to escalated, because what called a person (an open breaker, a crash
/// loop, a protected container) still holds.
fn relapse(inc: &mut Incident) {
    if inc.state == IncidentState::Mitigated {
        inc.state = if inc.escalated_at.is_some() {
            IncidentState::Escalated
        } else {
            IncidentState::Open
        };
        inc.recovered_at = None;
        inc.resolve_at = None;
    }
}

fn touch(inc: &Incident, env: &Envelope) -> Incident {
    let mut out = inc.clone();
    out.last_event_at = out.last_event_at.max(env.timestamp);
    out
}

fn entry(env: &Envelope, actor: Actor, kind: String, summary: &str) -> TimelineEntry {
    TimelineEntry {
        at: env.timestamp,
        actor,
        kind,
        summary: one_line(summary, SUMMARY_MAX_CHARS),
        envelope_id: env.id.clone(),
    }
}

fn new_incident(
    place: Place,
    id: String,
    kind: &str,
    severity: Severity,
    state: IncidentState,
    detected_at: DateTime<Utc>,
    env: &Envelope,
) -> Incident {
    Incident {
        id,
        key: place.key,
        host: place.host,
        containers: place.container.iter().cloned().collect(),
        container: place.container,
        kind: kind.to_owned(),
        severity,
        state,
        detected_at,
        first_action_at: None,
        recovered_at: None,
        resolved_at: None,
        escalated_at: None,
        closed_by: None,
        alerts: 0,
        actions: 0,
        refusals: 0,
        root_cause: None,
        last_event_at: env.timestamp,
        resolve_at: None,
        memory_limit_bytes: None,
        exit_code: None,
        open_problems: Vec::new(),
        last_action: None,
        escalation: None,
    }
}

fn on_failure(
    live: Option<&Incident>,
    env: &Envelope,
    place: Place,
    f: &Failure<'_>,
    new_id: impl FnOnce() -> String,
) -> Applied {
    let tag = if f.reminder { "reminder" } else { "alert" };
    let kind = format!("{tag}:{}", f.kind);
    let (mut inc, opened, relapsed) = match live {
        None => {
            let inc = new_incident(
                place,
                new_id(),
                f.kind,
                f.severity,
                IncidentState::Open,
                f.detected_at,
                env,
            );
            (inc, true, false)
        }
        Some(cur) => {
            let mut inc = touch(cur, env);
            let relapsed = inc.state == IncidentState::Mitigated;
            relapse(&mut inc);
            inc.severity = inc.severity.max(f.severity);
            (inc, false, relapsed)
        }
    };
    inc.alerts = inc.alerts.saturating_add(1);
    add_problem(&mut inc, f.kind);
    if f.memory_limit_bytes.is_some() {
        inc.memory_limit_bytes = f.memory_limit_bytes;
    }
    if f.exit_code.is_some() {
        inc.exit_code = f.exit_code;
    }
    let summary = if relapsed {
        format!("relapse: {}", f.summary)
    } else {
        f.summary.to_owned()
    };
    let e = entry(env, Actor::Monitor, kind, &summary);
    if opened {
        Applied::Opened(inc, e)
    } else {
        Applied::Updated(inc, e)
    }
}

fn on_user_action(live: Option<&Incident>, env: &Envelope, a: &ContainerAlert) -> Applied {
    let Some(cur) = live else {
        return Applied::Ignored;
    };
    let inc = touch(cur, env);
    let e = entry(
        env,
        Actor::Person,
        format!("person:{}", a.kind.as_str()),
        &a.summary,
    );
    Applied::Updated(inc, e)
}

fn on_recovery(
    live: Option<&Incident>,
    env: &Envelope,
    kind: &str,
    summary: &str,
    cfg: &IncidentConfig,
) -> Applied {
    let Some(cur) =
        live.filter(|c| matches!(c.state, IncidentState::Open | IncidentState::Escalated))
    else {
        return Applied::Ignored;
    };
    let mut inc = touch(cur, env);
    let tag = if clear_problem(&mut inc, Some(kind), env.timestamp, cfg) {
        "recovered".to_owned()
    } else {
        format!("cleared:{kind}")
    };
    Applied::Updated(inc, entry(env, Actor::Monitor, tag, summary))
}

fn method_actor(m: AnalysisMethod) -> Actor {
    match m {
        AnalysisMethod::Rules | AnalysisMethod::RulesFallback => Actor::Rule,
        AnalysisMethod::Llm => Actor::Llm,
        AnalysisMethod::Person => Actor::Person,
    }
}

fn action_str(a: Action) -> &'static str {
    match a {
        Action::Restart => "restart",
        Action::Stop => "stop",
        Action::Start => "start",
        Action::Cleanup => "cleanup",
        Action::None => "none",
    }
}

fn on_request(
    live: Option<&Incident>,
    env: &Envelope,
    r: &RemediationRequest,
    by_person: bool,
) -> Applied {
    let Some(cur) = live else {
        return Applied::Ignored;
    };
    let mut inc = touch(cur, env);
    let by_person = by_person || r.analysis_method == AnalysisMethod::Person;
    let action = action_str(r.action);
    let (actor, kind, summary) = if by_person {
        let who = r.requested_by.as_deref().unwrap_or("a person");
        (
            Actor::Person,
            format!("person:{action}"),
            format!("{who} asked for {action}"),
        )
    } else {
        // A person's request explains nothing about the failure, so only the analyzer's
        // verdicts supply the root cause, and the first one that names one is kept: later
        // verdicts of the same incident usually repeat or narrow it.
        if inc.root_cause.is_none() && !r.root_cause.trim().is_empty() {
            inc.root_cause = Some(one_line(&r.root_cause, ROOT_CAUSE_MAX_CHARS));
        }
        let mut s = format!("{} (confidence {:.2})", r.root_cause.trim(), r.confidence);
        if let Some(why) = r
            .fallback_reason
            .as_deref()
            .filter(|w| !w.trim().is_empty())
        {
            let _ = write!(s, "; rules decided because {why}");
        }
        (
            method_actor(r.analysis_method),
            format!("verdict:{action}"),
            s,
        )
    };
    Applied::Updated(inc, entry(env, actor, kind, &summary))
}

fn on_false_alarm(live: Option<&Incident>, env: &Envelope, f: &FalseAlarm) -> Applied {
    let Some(cur) = live else {
        return Applied::Ignored;
    };
    let inc = touch(cur, env);
    let summary = format!("no action: {} ({})", f.root_cause.trim(), f.reason.trim());
    Applied::Updated(
        inc,
        entry(
            env,
            method_actor(f.analysis_method),
            "false_alarm".into(),
            &summary,
        ),
    )
}

/// A verification that found the container running, and healthy when it has a health check.
fn verified(r: &RemediationResult) -> bool {
    r.verification
        .as_ref()
        .is_some_and(|v| v.running && v.healthy != Some(false))
}

fn on_result(
    live: Option<&Incident>,
    env: &Envelope,
    r: &RemediationResult,
    cfg: &IncidentConfig,
) -> Applied {
    let Some(cur) = live else {
        return Applied::Ignored;
    };
    let mut inc = touch(cur, env);
    let at = env.timestamp;
    let action = action_str(r.action);
    let reached_docker = !r.dry_run
        && matches!(
            r.outcome,
            Outcome::Success | Outcome::Failed | Outcome::Superseded
        );
    if reached_docker {
        inc.actions = inc.actions.saturating_add(1);
        inc.first_action_at.get_or_insert(at);
        inc.last_action = Some(action.to_owned());
    }
    let summary = format!("{action}: {}", r.reason.trim());
    let (actor, kind) = match (r.outcome, r.guard) {
        (Outcome::Success, _) if r.dry_run => (Actor::Responder, "dry_run".to_owned()),
        (Outcome::Success, _) => {
            if verified(r) {
                // A verified restart fixes every problem of the container at once.
                clear_problem(&mut inc, None, at, cfg);
            }
            (Actor::Responder, "result:success".to_owned())
        }
        (Outcome::Failed, _) => (Actor::Responder, "result:failed".to_owned()),
        (Outcome::Superseded, _) => (Actor::Person, "superseded".to_owned()),
        (Outcome::Rejected | Outcome::Skipped, Some(Guard::Problem)) => {
            // The problem the request named is gone: it recovered by itself (or through
            // Docker's restart policy). That is a recovery, not a refusal.
            let problem = r.problem.map(ProblemKind::as_str);
            clear_problem(&mut inc, problem, at, cfg);
            (Actor::Guard, "skipped:problem".to_owned())
        }
        (Outcome::Rejected | Outcome::Skipped, Some(g)) => {
            inc.refusals = inc.refusals.saturating_add(1);
            (Actor::Guard, format!("refused:{}", g.as_str()))
        }
        (Outcome::Rejected, None) => {
            inc.refusals = inc.refusals.saturating_add(1);
            (Actor::Guard, "refused".to_owned())
        }
        (Outcome::Skipped, None) if r.dry_run => (Actor::Responder, "dry_run".to_owned()),
        (Outcome::Skipped, None) => (Actor::Responder, "skipped".to_owned()),
    };
    Applied::Updated(inc, entry(env, actor, kind, &summary))
}

fn escalation_str(k: EscalationKind) -> &'static str {
    match k {
        EscalationKind::CircuitBreakerOpen => "circuit_breaker_open",
        EscalationKind::CrashLoop => "crash_loop",
        EscalationKind::RemediationFailed => "remediation_failed",
        EscalationKind::HostWide => "host_wide",
        EscalationKind::RemediationPaused => "remediation_paused",
        EscalationKind::ProtectedContainer => "protected_container",
        EscalationKind::ApprovalNeeded => "approval_needed",
        EscalationKind::Other => "other",
    }
}

/// Who raised an escalation: the analyzer's rules, the monitor, a person at the dashboard, or
/// (from the responder) its guards, except a failed remediation, which is the responder's own.
fn escalation_actor(env: &Envelope, e: &Escalation) -> Actor {
    match env.agent.as_str() {
        "analyzer" => Actor::Rule,
        "monitor" => Actor::Monitor,
        "dashboard" => Actor::Person,
        _ if e.kind == EscalationKind::RemediationFailed => Actor::Responder,
        _ => Actor::Guard,
    }
}

/// Adds names to a host incident's containers: sorted, deduplicated, the first
/// [`CONTAINERS_MAX`] kept.
fn merge_containers(list: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    list.extend(more.into_iter().filter(|n| !n.is_empty()));
    list.sort();
    list.dedup();
    list.truncate(CONTAINERS_MAX);
}

fn on_escalation(
    live: Option<&Incident>,
    env: &Envelope,
    e: &Escalation,
    involved: &[String],
    place: Place,
    new_id: impl FnOnce() -> String,
) -> Applied {
    let ekind = escalation_str(e.kind);
    let actor = escalation_actor(env, e);
    let kind = match e.kind {
        EscalationKind::ApprovalNeeded => "approval_needed".to_owned(),
        _ => format!("escalation:{ekind}"),
    };
    let summary = if e.detail.trim().is_empty() {
        e.summary.trim().to_owned()
    } else {
        format!("{} ({})", e.summary.trim(), e.detail.trim())
    };
    let calls_person = matches!(
        e.kind,
        EscalationKind::CircuitBreakerOpen
            | EscalationKind::CrashLoop
            | EscalationKind::RemediationFailed
            | EscalationKind::ProtectedContainer
            | EscalationKind::HostWide
    );
    let storm = e.kind == EscalationKind::RemediationPaused;
    if !calls_person && !storm {
        // An approval request or another notice: worth a line in the timeline of an incident,
        // never an incident of its own.
        let Some(cur) = live else {
            return Applied::Ignored;
        };
        let inc = touch(cur, env);
        return Applied::Updated(inc, entry(env, actor, kind, &summary));
    }
    let at = env.timestamp;
    let (mut inc, opened) = match live {
        None => {
            let (opened_kind, state) = if storm {
                (STORM, IncidentState::Open)
            } else {
                (ekind, IncidentState::Escalated)
            };
            let inc = new_incident(place, new_id(), opened_kind, e.severity, state, at, env);
            (inc, true)
        }
        Some(cur) => {
            let mut inc = touch(cur, env);
            inc.severity = inc.severity.max(e.severity);
            if storm {
                // A storm is new trouble on the host: a mitigated host incident relapses.
                relapse(&mut inc);
            }
            (inc, false)
        }
    };
    if storm {
        add_problem(&mut inc, STORM);
    }
    if storm || e.kind == EscalationKind::HostWide {
        let named = e.container.as_ref().map(name_of);
        merge_containers(&mut inc.containers, involved.iter().cloned().chain(named));
    }
    if calls_person {
        inc.escalated_at.get_or_insert(at);
        inc.escalation = Some(ekind.to_owned());
        // A mitigated incident stays mitigated: the container runs again, and if it fails
        // anew the relapse returns it to escalated, because `escalated_at` is now set.
        if inc.state == IncidentState::Open {
            inc.state = IncidentState::Escalated;
        }
    }
    let e = entry(env, actor, kind, &summary);
    if opened {
        Applied::Opened(inc, e)
    } else {
        Applied::Updated(inc, e)
    }
}

/// `t + d`, saturating at the end of time.
fn add(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the beginning of time.
fn sub(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn secs_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// Text on one line: line breaks, tabs and other control characters become spaces, runs of
/// spaces one, Unicode direction overrides are dropped, and a text longer than `max` characters
/// is cut to `max` with `…` as the last.
pub fn one_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    let mut space = false;
    for c in s.chars() {
        if matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            continue;
        }
        if c.is_whitespace() || c.is_control() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    if out.chars().count() > max {
        let mut cut: String = out.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        out
    }
}

/// A duration for people: `0.4 s`, `12 s`, `1 min 12 s`, `2 h 5 min`, `3 d 4 h`.
pub fn format_duration(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    if secs < 10.0 {
        return format!("{secs:.1} s");
    }
    let whole = secs as u64;
    let (d, h, m, s) = (
        whole / 86_400,
        whole % 86_400 / 3600,
        whole % 3600 / 60,
        whole % 60,
    );
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

/// A byte count in MiB: `96 MiB`, `95.4 MiB`.
pub fn format_mib(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{mib:.1} MiB")
    }
}

/// What a container's exit code usually means.
pub fn exit_code_meaning(code: i64) -> &'static str {
    match code {
        0 => "it exited cleanly",
        1 => "an application error",
        2 => "a misused command or bad arguments",
        125 => "the container could not be created or started",
        126 => "its command could not be run (permissions, not executable)",
        127 => "its command was not found",
        130 => "SIGINT: interrupted",
        134 => "SIGABRT: the process aborted",
        137 => "SIGKILL: the OOM killer or `docker kill`",
        139 => "SIGSEGV: a segmentation fault",
        143 => "SIGTERM: asked to stop and exited",
        129..=192 => "killed by a signal (the code minus 128)",
        _ => "an application-specific code",
    }
}

/// What a person should check first for an incident or escalation of `kind` (plain text; the
/// placeholder `<name>` stands for the container).
pub fn advice(kind: &str) -> &'static str {
    match kind {
        "died" => {
            "Read its last output with `docker logs --tail 100 <name>` and its exit code with \
             `docker inspect -f '{{.State.ExitCode}}' <name>`: 1 is an application error, 137 a \
             SIGKILL (the OOM killer or `docker kill`), 139 a segmentation fault, 143 a SIGTERM \
             it did not survive. Then check what changed last: the image, its configuration or \
             environment, mounted files, and whether what it depends on (database, DNS, \
             network) is reachable."
        }
        "oom_killed" => {
            "The kernel killed it for using more memory than its limit. Compare the limit with \
             its working set in `docker stats --no-stream <name>`, and look for steady growth \
             before the kill (a leak) or a recent deploy that needs more. Raise the limit if the \
             working set is legitimate; otherwise find what grew, from the application's own \
             metrics or a heap profile."
        }
        "oom" => {
            "A process inside the container was OOM-killed while the container kept running, so \
             a worker may be gone without a trace. Check `docker stats --no-stream <name>` \
             against its memory limit and the application log for a missing or restarted \
             worker. Raise the limit, or bound the work (fewer workers, smaller caches)."
        }
        "unhealthy" => {
            "Its health check fails: read the last results with \
             `docker inspect -f '{{json .State.Health}}' <name>` and run the same check by hand \
             with `docker exec`. Check whether it is slow rather than down (a timeout too tight \
             for the load), and whether something the check depends on, such as a database, is \
             reachable."
        }
        "crash_loop" => {
            "It fails again soon after every start, so restarting will not fix it. Read the \
             first error after start-up in `docker logs --tail 200 <name>`; the usual causes \
             are a bad configuration or secret, a missing file or volume, a dependency that is \
             down, or a broken image. Fix the cause, then let hemostat act again with \
             `hemostat-responder reset-breaker <name>`."
        }
        "circuit_breaker_open" => {
            "hemostat restarted this container too often in a short time and has stopped \
             trying, because restarts are not fixing it. Find the error that repeats in \
             `docker logs --tail 200 <name>`, fix it, then run \
             `hemostat-responder reset-breaker <name>` so hemostat may act again."
        }
        "remediation_failed" => {
            "hemostat acted, but the container did not come back running (and healthy) in \
             time. Check `docker ps -a` and `docker logs --tail 100 <name>` for why it fails \
             to start, and `docker inspect <name>` for the engine's last error: a missing \
             image, a port already in use and a bad mount are common."
        }
        "protected_container" => {
            "This container is protected, so hemostat only reports and never acts on it. Look \
             at it yourself with `docker logs --tail 100 <name>` and `docker inspect <name>`, \
             and restart it by hand if that is safe."
        }
        "cpu_high" => {
            "Find what burns CPU with `docker top <name>` and `docker stats <name>`, and \
             compare with its CPU limit. Look for a traffic spike, a busy loop or a retry storm \
             in the logs, or a recent deploy; if the load is real, give it more CPU or more \
             replicas."
        }
        "memory_high" => {
            "Its memory is close to the limit: compare the working set in \
             `docker stats --no-stream <name>` with the limit, and watch how fast it grows. \
             Steady growth points to a leak or an unbounded cache, a step after a deploy to a \
             new need. Act before the OOM killer does: raise the limit, or restart it at a \
             quiet moment."
        }
        "anomaly" => {
            "A metric is far outside what this container usually does, without crossing a \
             fixed threshold. Compare `docker stats <name>` with its usual level, and check the \
             logs and recent deploys for what changed. It may be legitimate, such as a batch job \
             or a traffic peak; then nothing needs doing."
        }
        "disk_pressure" => {
            "The disk holding Docker's data is nearly full. See what uses it with \
             `docker system df -v`; the usual culprits are container logs without a size limit, \
             unused images and build cache (`docker image prune`, `docker builder prune`), and \
             growing volumes. Free space before writes start failing, then set limits so it \
             does not come back."
        }
        "memory_pressure" => {
            "The host is nearly out of memory, so the kernel may start killing processes. Find \
             the biggest users with `docker stats --no-stream` and `top`, look for containers \
             without a memory limit and for one that keeps growing. Limit or move the greedy \
             ones, or give the host more memory."
        }
        "cpu_pressure" => {
            "The host's CPUs are saturated. Find the busiest containers with \
             `docker stats --no-stream` and processes outside Docker with `top`; look for a \
             runaway container, a batch job at a bad time, or simply more load than the host \
             can carry. Cap the offenders with CPU limits or move work elsewhere."
        }
        "storm" => {
            "Many containers on this host began failing at once, so the cause is probably \
             shared: the host itself (memory, disk, kernel), the Docker daemon, the network, or \
             a service they all depend on. hemostat holds its restarts until the storm passes. \
             Check `docker info`, `dmesg -T | tail -50`, the host's resources and the shared \
             services before restarting anything by hand."
        }
        "host_wide" => {
            "The host itself is in trouble and hemostat cannot fix it alone. Check its \
             resources with `df -h`, `free -m` and `top`, and `docker system df` for Docker's \
             own share, then free or add what runs out."
        }
        _ => {
            "Look at the container's state and recent output with `docker ps -a`, \
             `docker logs --tail 100 <name>` and `docker inspect <name>`, and at what changed \
             recently: deploys, configuration, the host. Close the incident once it is \
             handled."
        }
    }
}

/// What hemostat did about one past incident, for [`history_line`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastRecord {
    /// When it was detected.
    pub at: DateTime<Utc>,
    /// The latest action that reached Docker (`restart`, ...), or `none`.
    pub action: String,
    /// How it ended: `recovered`, `escalated (breaker open)`, `closed by alice`, `ongoing`, ...
    pub outcome: String,
    /// From detection to recovery, when it recovered.
    pub recovery_secs: Option<f64>,
}

impl PastRecord {
    /// What one incident says about what hemostat did.
    pub fn of(inc: &Incident) -> PastRecord {
        let outcome = if let Some(e) = inc.escalation.as_deref() {
            format!("escalated ({})", escalation_words(e))
        } else if inc.recovered_at.is_some() {
            "recovered".to_owned()
        } else if let Some(by) = inc.closed_by.as_deref() {
            format!("closed by {by}")
        } else if inc.state == IncidentState::Resolved {
            "resolved".to_owned()
        } else {
            "ongoing".to_owned()
        };
        PastRecord {
            at: inc.detected_at,
            action: inc.last_action.clone().unwrap_or_else(|| "none".to_owned()),
            outcome,
            recovery_secs: inc.recovered_at.map(|r| secs_between(inc.detected_at, r)),
        }
    }

    /// One phrase: `restarted and recovered in 4.2 s (2026-12-01)`.
    pub fn phrase(&self) -> String {
        let done = match self.action.as_str() {
            "restart" => Some("restarted"),
            "stop" => Some("stopped"),
            "start" => Some("started"),
            "cleanup" => Some("cleaned up"),
            _ => None,
        };
        let recovered = self
            .recovery_secs
            .map(|s| format!("recovered in {}", format_duration(s)));
        let mut parts: Vec<String> = Vec::new();
        if let Some(d) = done {
            parts.push(d.to_owned());
        }
        if self.outcome.starts_with("escalated") {
            parts.push(self.outcome.clone());
        }
        match recovered {
            Some(r) if parts.is_empty() => parts.push(format!("{r} without action")),
            Some(r) => parts.push(r),
            None if !self.outcome.starts_with("escalated") => parts.push(self.outcome.clone()),
            None => {}
        }
        format!("{} ({})", parts.join(" and "), self.at.format("%Y-%m-%d"))
    }
}

/// How an escalation kind reads in a sentence: `breaker open`, `crash loop`.
fn escalation_words(kind: &str) -> String {
    match kind {
        "circuit_breaker_open" => "breaker open".to_owned(),
        other => other.replace('_', " "),
    }
}

/// What hemostat did the last `n` times (newest first), e.g. `Last 3 incidents: restarted and
/// recovered in 4.2 s (2026-12-01), recovered in 12 s without action (2026-11-30), restarted
/// and escalated (breaker open) (2026-11-29)`.
pub fn history_line(past: &[Incident], n: usize) -> String {
    if past.is_empty() || n == 0 {
        return "No earlier incidents.".to_owned();
    }
    let mut sorted: Vec<&Incident> = past.iter().collect();
    sorted.sort_by(|a, b| b.detected_at.cmp(&a.detected_at).then(b.id.cmp(&a.id)));
    sorted.truncate(n);
    let phrases: Vec<String> = sorted.iter().map(|i| PastRecord::of(i).phrase()).collect();
    let head = if sorted.len() == 1 {
        "Last incident".to_owned()
    } else {
        format!("Last {} incidents", sorted.len())
    };
    format!("{head}: {}", phrases.join(", "))
}

/// RFC 3339 with milliseconds and `Z`, the one form the postmortem writes dates in.
fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn rfc_or(t: Option<DateTime<Utc>>, none: &str) -> String {
    t.map_or_else(|| none.to_owned(), rfc)
}

/// Text from containers, the LLM or people, made inert for Markdown: one line, with every
/// character that could start formatting, a link, HTML or a table cell escaped.
fn md(s: &str) -> String {
    let line = one_line(s, ROOT_CAUSE_MAX_CHARS);
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' | '~' | '&' | '!'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An identifier hemostat made (a kind, a timeline tag), fit for a heading or a code span as it
/// is: only the characters such identifiers are made of are kept.
fn tag(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
        .collect()
}

/// `1 refusal`, `2 refusals`.
fn count(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A container name fit for a code span: Docker's name characters only, so nothing can end
/// the span.
fn code_safe(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .collect()
}

/// The advice of `kind`, with the placeholder filled in with the container's name.
fn advice_for(kind: &str, name: Option<&str>) -> String {
    let text = advice(kind);
    match name {
        Some(n) => text.replace("<name>", &code_safe(n)),
        None => text.to_owned(),
    }
}

/// A Markdown postmortem of one incident. `timeline` is the incident's entries (rendered in
/// time order, at most [`TIMELINE_MAX`]); `past` the container's earlier incidents. Equal input
/// gives equal output, and every time is either RFC 3339 with milliseconds
/// (`2026-11-22T06:00:00.000Z`) or a time of day `HH:MM:SS.mmm`, so a test can mask them.
pub fn postmortem(inc: &Incident, timeline: &[TimelineEntry], past: &[Incident]) -> String {
    let mut entries: Vec<&TimelineEntry> = timeline.iter().collect();
    entries.sort_by_key(|e| e.at);
    let past: Vec<Incident> = past.iter().filter(|p| p.id != inc.id).cloned().collect();
    let name = inc.container.as_deref();
    let who = name.map_or_else(|| "the host".to_owned(), md);
    let mut out = String::new();

    let _ = writeln!(
        out,
        "# Incident {}: {} of {} on {}\n",
        md(&inc.id),
        tag(&inc.kind),
        who,
        md(&inc.host)
    );

    out.push_str("## Summary\n\n");
    let _ = writeln!(out, "- State: {}", inc.state.as_str());
    let _ = writeln!(out, "- Severity: {}", severity_str(inc.severity));
    let _ = writeln!(out, "- Detected: {}", rfc(inc.detected_at));
    let _ = writeln!(
        out,
        "- First action: {}",
        rfc_or(inc.first_action_at, "none")
    );
    let _ = writeln!(
        out,
        "- Verified recovery: {}",
        rfc_or(inc.recovered_at, "none")
    );
    let _ = writeln!(out, "- Resolved: {}", rfc_or(inc.resolved_at, "not yet"));
    if let Some(at) = inc.escalated_at {
        let why = inc.escalation.as_deref().map(escalation_words);
        let _ = writeln!(
            out,
            "- Escalated: {}{}",
            rfc(at),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        );
    }
    let closed = match (&inc.closed_by, inc.state) {
        (Some(by), _) => md(by),
        (None, IncidentState::Resolved) => {
            "nobody: it resolved after the quiet period with no relapse".to_owned()
        }
        (None, _) => "nobody yet".to_owned(),
    };
    let _ = writeln!(out, "- Closed by: {closed}");
    let _ = writeln!(
        out,
        "- Alerts: {}, actions: {}, refusals: {}",
        inc.alerts, inc.actions, inc.refusals
    );
    if inc.container.is_none() && !inc.containers.is_empty() {
        let names: Vec<String> = inc.containers.iter().map(|c| md(c)).collect();
        let _ = writeln!(out, "- Containers: {}", names.join(", "));
    }
    if let Some(code) = inc.exit_code {
        let _ = writeln!(out, "- Exit code: {code} ({})", exit_code_meaning(code));
    }
    if let Some(limit) = inc.memory_limit_bytes {
        let _ = writeln!(out, "- Memory limit: {}", format_mib(limit));
    }
    out.push('\n');

    out.push_str("## Impact\n\n");
    match (inc.recovered_at, inc.state) {
        (Some(r), state) => {
            let _ = write!(
                out,
                "Down for {}, from detection to verified recovery.",
                format_duration(secs_between(inc.detected_at, r))
            );
            if state == IncidentState::Mitigated
                && let Some(at) = inc.resolve_at
            {
                let _ = write!(
                    out,
                    " Ongoing: it resolves at {} unless it fails again.",
                    rfc(at)
                );
            }
            out.push('\n');
        }
        (None, IncidentState::Resolved) => {
            let end = inc.resolved_at.unwrap_or(inc.last_event_at);
            let _ = writeln!(
                out,
                "Unknown: it was closed {} after detection, before a recovery was seen.",
                format_duration(secs_between(inc.detected_at, end))
            );
        }
        (None, _) => out.push_str("Ongoing: still down, since detection.\n"),
    }
    out.push('\n');

    out.push_str("## Timeline\n\n");
    out.push_str("| time (UTC) | who | what |\n|---|---|---|\n");
    for e in entries.iter().take(TIMELINE_MAX) {
        let _ = writeln!(
            out,
            "| {} | {} | `{}` {} |",
            e.at.format("%H:%M:%S%.3f"),
            e.actor.as_str(),
            tag(&e.kind),
            md(&e.summary)
        );
    }
    if entries.len() > TIMELINE_MAX {
        let _ = writeln!(
            out,
            "\n{} later entries are left out.",
            entries.len() - TIMELINE_MAX
        );
    }
    out.push('\n');

    out.push_str("## Root cause\n\n");
    match inc.root_cause.as_deref().filter(|r| !r.trim().is_empty()) {
        Some(r) => {
            let _ = writeln!(out, "{}", md(r));
        }
        None => out.push_str("Not analysed.\n"),
    }
    out.push('\n');

    out.push_str("## Actions taken\n\n");
    let actions: Vec<&&TimelineEntry> = entries
        .iter()
        .filter(|e| {
            e.kind.starts_with("result:")
                || e.kind.starts_with("person:")
                || matches!(e.kind.as_str(), "superseded" | "dry_run" | "closed")
        })
        .collect();
    if actions.is_empty() {
        out.push_str("None.\n");
    } else {
        for e in actions {
            let _ = writeln!(
                out,
                "- {} `{}` ({}): {}",
                e.at.format("%H:%M:%S%.3f"),
                tag(&e.kind),
                e.actor.as_str(),
                md(&e.summary)
            );
        }
    }
    out.push('\n');

    out.push_str("## What the guards refused\n\n");
    let refused: Vec<&&TimelineEntry> = entries
        .iter()
        .filter(|e| e.kind == "refused" || e.kind.starts_with("refused:"))
        .collect();
    if refused.is_empty() {
        out.push_str("Nothing.\n");
    } else {
        for e in refused {
            let guard = e.kind.strip_prefix("refused:").unwrap_or("unknown guard");
            let _ = writeln!(
                out,
                "- {} `{}`: {}",
                e.at.format("%H:%M:%S%.3f"),
                tag(guard),
                md(&e.summary)
            );
        }
    }
    out.push('\n');

    out.push_str("## Follow-ups\n\n");
    for f in follow_ups(inc, &entries, &past) {
        let _ = writeln!(out, "- {f}");
    }
    out.push('\n');

    out.push_str("## Runbook\n");
    for kind in runbook_kinds(inc, &entries) {
        let _ = write!(out, "\n### {}\n\n{}\n", tag(&kind), advice_for(&kind, name));
    }
    out
}

fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// The escalation kinds an incident went through, in order, from its entries and its record.
fn escalations_seen(inc: &Incident, entries: &[&TimelineEntry]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let from_entries = entries
        .iter()
        .filter_map(|e| e.kind.strip_prefix("escalation:"))
        .map(str::to_owned);
    for k in from_entries.chain(inc.escalation.clone()) {
        if !seen.contains(&k) {
            seen.push(k);
        }
    }
    seen
}

fn follow_ups(inc: &Incident, entries: &[&TimelineEntry], past: &[Incident]) -> Vec<String> {
    let name = inc.container.as_deref();
    let who = name.map_or_else(|| "the host".to_owned(), md);
    let escalations = escalations_seen(inc, entries);
    let alerted = |kind: &str| {
        inc.kind == kind
            || entries.iter().any(|e| {
                e.kind
                    .split_once(':')
                    .is_some_and(|(tag, k)| matches!(tag, "alert" | "reminder") && k == kind)
            })
    };
    let mut out = Vec::new();
    if alerted("oom_killed") || alerted("oom") {
        out.push(match inc.memory_limit_bytes {
            Some(limit) => format!(
                "Raise the {} memory limit of {who}, or find what grew.",
                format_mib(limit)
            ),
            None => format!(
                "Find what grew in {who}: it ran out of memory, and no container memory limit \
                 is known, so the host's memory may be what ran out."
            ),
        });
    }
    if escalations
        .iter()
        .any(|e| e == "crash_loop" || e == "circuit_breaker_open")
    {
        let reset = name.map_or_else(|| "<name>".to_owned(), code_safe);
        out.push(format!(
            "Fix the cause, then `hemostat-responder reset-breaker {reset}`."
        ));
    }
    if escalations.iter().any(|e| e == "remediation_failed") {
        out.push(format!(
            "Find out why {who} did not come back after hemostat acted: its start-up log and \
             `docker inspect` say why."
        ));
    }
    if escalations.iter().any(|e| e == "protected_container") {
        out.push(format!(
            "{who} is protected: hemostat will not act on it, so a person has to."
        ));
    }
    if inc.refusals > 0 {
        out.push(format!(
            "Check that the guards were right to hold back ({} above).",
            count(inc.refusals as usize, "refusal")
        ));
    }
    if !past.is_empty() {
        out.push(format!(
            "This container had {} before. {}.",
            count(past.len(), "incident"),
            md(&history_line(past, 5))
        ));
    }
    if matches!(inc.state, IncidentState::Open | IncidentState::Escalated) {
        out.push("Close this incident once it is handled.".to_owned());
    }
    out.push(format!("What to check: {}", advice_for(&inc.kind, name)));
    out
}

/// The kinds whose advice the runbook shows: the incident's own, then each escalation, then each
/// other kind of alert seen, without repeats.
fn runbook_kinds(inc: &Incident, entries: &[&TimelineEntry]) -> Vec<String> {
    let mut kinds = vec![inc.kind.clone()];
    let alerts = entries.iter().filter_map(|e| {
        e.kind
            .split_once(':')
            .filter(|(tag, _)| matches!(*tag, "alert" | "reminder"))
            .map(|(_, k)| k.to_owned())
    });
    for k in escalations_seen(inc, entries).into_iter().chain(alerts) {
        if k != "remediation_paused" && !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    kinds
}

/// How reliable something was over a window ending now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    pub window_secs: u64,
    /// The share of the window that was not down, in [0, 1].
    pub availability: f64,
    /// Down time within the window, overlapping incidents counted once.
    pub downtime_secs: f64,
    /// Incidents detected within the window.
    pub incidents: u32,
    /// Mean time from detection to recovery of the incidents that recovered within the window.
    pub mttr_secs: Option<f64>,
}

/// Reliability of the given incidents over `[now - window, now)`. Each incident is down from its
/// detection until its recovery; one that never recovered until `now`, or until a person closed
/// it (then its resolution ends it, since nothing more is known). Overlapping downtimes are
/// merged, so two incidents at once (a container and its host) count once.
pub fn reliability(
    incidents: &[Incident],
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> Reliability {
    let start = sub(now, window);
    let window_secs = window.as_secs();
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = incidents
        .iter()
        .filter_map(|i| {
            let end = i.recovered_at.or(i.resolved_at).unwrap_or(now);
            let (from, to) = (i.detected_at.max(start), end.min(now));
            (from < to).then_some((from, to))
        })
        .collect();
    spans.sort();
    let mut downtime = 0.0;
    let mut current: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for (from, to) in spans {
        current = match current {
            Some((a, b)) if from <= b => Some((a, b.max(to))),
            Some((a, b)) => {
                downtime += secs_between(a, b);
                Some((from, to))
            }
            None => Some((from, to)),
        };
    }
    if let Some((a, b)) = current {
        downtime += secs_between(a, b);
    }
    let count = incidents
        .iter()
        .filter(|i| i.detected_at >= start && i.detected_at < now)
        .count();
    let repairs: Vec<f64> = incidents
        .iter()
        .filter_map(|i| {
            let r = i.recovered_at?;
            (r >= start && r <= now).then(|| secs_between(i.detected_at, r).max(0.0))
        })
        .collect();
    let mttr = (!repairs.is_empty()).then(|| repairs.iter().sum::<f64>() / repairs.len() as f64);
    let total = window.as_secs_f64();
    let availability = if total > 0.0 {
        (1.0 - downtime / total).clamp(0.0, 1.0)
    } else {
        1.0
    };
    Reliability {
        window_secs,
        availability,
        downtime_secs: downtime,
        incidents: u32::try_from(count).unwrap_or(u32::MAX),
        mttr_secs: mttr,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::events::{
        AlertKind, ContainerState, Detection, HostAlert, HostAlertKind, HostSample, Problem,
        Verification,
    };
    use chrono::TimeZone;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const HOST: &str = "docker-01";

    /// 2026-11-22 at the given time of day, with milliseconds.
    fn at(h: u32, m: u32, s: u32, ms: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap() + TimeDelta::milliseconds(ms)
    }

    fn quiet() -> TimeDelta {
        TimeDelta::from_std(IncidentConfig::default().quiet).unwrap()
    }

    fn cref(name: &str) -> ContainerRef {
        ContainerRef {
            id: format!("id-{name}"),
            name: name.into(),
            image: "example/app:1.0".into(),
            labels: BTreeMap::new(),
        }
    }

    fn env(agent: &str, t: DateTime<Utc>, payload: Payload) -> Envelope {
        let mut e = Envelope::new(agent, HOST, payload);
        e.timestamp = t;
        e
    }

    fn alert(name: &str, kind: AlertKind) -> ContainerAlert {
        ContainerAlert {
            container: cref(name),
            kind,
            severity: Severity::Critical,
            user_initiated: false,
            reminder: false,
            detected_by: Detection::Event,
            summary: format!("container {name}: {}", kind.as_str()),
            state: None,
            metrics: None,
            breach: None,
            since: None,
            docker_event_time: None,
            protected: false,
            logs: None,
        }
    }

    fn failing(name: &str, kind: AlertKind, t: DateTime<Utc>) -> Envelope {
        env("monitor", t, Payload::ContainerUnhealthy(alert(name, kind)))
    }

    fn died(name: &str, t: DateTime<Utc>, since: Option<DateTime<Utc>>) -> Envelope {
        let mut a = alert(name, AlertKind::Died);
        a.since = since;
        a.state = Some(ContainerState {
            status: "exited".into(),
            exit_code: Some(1),
            ..ContainerState::default()
        });
        env("monitor", t, Payload::ContainerUnhealthy(a))
    }

    fn recovered(name: &str, kind: AlertKind, t: DateTime<Utc>) -> Envelope {
        let mut a = alert(name, kind);
        a.severity = Severity::Info;
        a.summary = format!("container {name} is running again");
        env("monitor", t, Payload::ContainerRecovered(a))
    }

    fn user_action(name: &str, kind: AlertKind, t: DateTime<Utc>) -> Envelope {
        let mut a = alert(name, kind);
        a.user_initiated = true;
        a.severity = Severity::Info;
        env("monitor", t, Payload::ContainerUserAction(a))
    }

    fn req(name: &str, method: AnalysisMethod, root_cause: &str) -> RemediationRequest {
        RemediationRequest {
            container: Some(cref(name)),
            target_host: HOST.into(),
            action: Action::Restart,
            root_cause: root_cause.into(),
            reason: "exit code 1".into(),
            confidence: 0.9,
            analysis_method: method,
            fallback_reason: None,
            alert_id: "01ALERT".into(),
            problem: Some(Problem::new(ProblemKind::Died)),
            requested_by: None,
        }
    }

    fn request(name: &str, method: AnalysisMethod, t: DateTime<Utc>) -> Envelope {
        env(
            "analyzer",
            t,
            Payload::RemediationNeeded(req(name, method, "the process crashed")),
        )
    }

    fn res(name: &str, outcome: Outcome, guard: Option<Guard>) -> RemediationResult {
        RemediationResult {
            container: Some(cref(name)),
            request_id: "01REQ".into(),
            action: Action::Restart,
            outcome,
            reason: format!("{outcome:?}"),
            verification: None,
            duration_ms: 600,
            dry_run: false,
            guard,
            problem: Some(ProblemKind::Died),
        }
    }

    fn result(name: &str, outcome: Outcome, guard: Option<Guard>, t: DateTime<Utc>) -> Envelope {
        env(
            "responder",
            t,
            Payload::RemediationComplete(res(name, outcome, guard)),
        )
    }

    /// A successful restart whose verification found the container running.
    fn restarted(name: &str, t: DateTime<Utc>) -> Envelope {
        let mut r = res(name, Outcome::Success, None);
        r.reason = "restarted; running within 0.4 s".into();
        r.verification = Some(Verification {
            running: true,
            healthy: None,
            waited_ms: 400,
            detail: "running".into(),
        });
        env("responder", t, Payload::RemediationComplete(r))
    }

    fn escalation(name: Option<&str>, kind: EscalationKind, t: DateTime<Utc>) -> Envelope {
        env(
            "responder",
            t,
            Payload::Escalation(Escalation {
                kind,
                severity: Severity::Critical,
                container: name.map(cref),
                summary: format!("{kind:?}"),
                detail: String::new(),
                proposal: None,
            }),
        )
    }

    fn host_alert(kind: HostAlertKind, recovered: bool, t: DateTime<Utc>) -> Envelope {
        let a = HostAlert {
            kind,
            severity: Severity::Warning,
            summary: "host disk use is 92.4 %, over 90 %".into(),
            reminder: false,
            sample: HostSample::default(),
            threshold: Some(90.0),
        };
        let payload = if recovered {
            Payload::HostRecovered(a)
        } else {
            Payload::HostUnhealthy(a)
        };
        env("monitor", t, payload)
    }

    /// What the incident-keeping component will do: one incident per key, with its timeline.
    #[derive(Default)]
    struct Keeper {
        incidents: BTreeMap<String, Incident>,
        timelines: BTreeMap<String, Vec<TimelineEntry>>,
        opened: u32,
        cfg: IncidentConfig,
    }

    impl Keeper {
        fn feed(&mut self, e: &Envelope) -> &'static str {
            self.feed_storm(e, &[])
        }

        fn feed_storm(&mut self, e: &Envelope, involved: &[String]) -> &'static str {
            let Some((key, _, _)) = key_of(e) else {
                return "ignored";
            };
            let next = self.opened + 1;
            let applied = apply_storm(self.incidents.get(&key), e, involved, &self.cfg, || {
                format!("inc-{next}")
            });
            let what = match &applied {
                Applied::Opened(..) => {
                    self.opened = next;
                    self.timelines.remove(&key);
                    "opened"
                }
                Applied::Updated(..) => "updated",
                Applied::Ignored => "ignored",
            };
            if let Some((inc, entry)) = applied.into_parts() {
                self.incidents.insert(key.clone(), inc);
                self.timelines.entry(key).or_default().push(entry);
            }
            what
        }

        fn get(&self, container: &str) -> &Incident {
            &self.incidents[&incident_key(HOST, Some(container))]
        }

        fn kinds(&self, container: &str) -> Vec<String> {
            self.timelines[&incident_key(HOST, Some(container))]
                .iter()
                .map(|e| e.kind.clone())
                .collect()
        }

        fn last(&self, container: &str) -> &TimelineEntry {
            self.timelines[&incident_key(HOST, Some(container))]
                .last()
                .unwrap()
        }
    }

    #[test]
    fn a_kill_is_one_incident_until_the_quiet_period_passes() {
        let mut k = Keeper::default();
        let since = at(6, 0, 0, 100);
        assert_eq!(
            k.feed(&died("web", at(6, 0, 0, 500), Some(since))),
            "opened"
        );
        let inc = k.get("web");
        assert_eq!(inc.id, "inc-1");
        assert_eq!(inc.key, "docker-01/web");
        assert_eq!(inc.kind, "died");
        assert_eq!(inc.state, IncidentState::Open);
        assert_eq!(inc.detected_at, since);
        assert_eq!(inc.exit_code, Some(1));
        assert_eq!(inc.open_problems, vec!["died".to_owned()]);
        assert_eq!(inc.containers, vec!["web".to_owned()]);

        assert_eq!(
            k.feed(&request("web", AnalysisMethod::Rules, at(6, 0, 0, 700))),
            "updated"
        );
        assert_eq!(
            k.get("web").root_cause.as_deref(),
            Some("the process crashed")
        );
        assert_eq!(k.last("web").actor, Actor::Rule);

        let done = at(6, 0, 1, 600);
        assert_eq!(k.feed(&restarted("web", done)), "updated");
        let inc = k.get("web").clone();
        assert_eq!(inc.state, IncidentState::Mitigated);
        assert_eq!(inc.first_action_at, Some(done));
        assert_eq!(inc.recovered_at, Some(done));
        assert_eq!(inc.resolve_at, Some(done + quiet()));
        assert_eq!((inc.alerts, inc.actions, inc.refusals), (1, 1, 0));
        assert_eq!(inc.last_action.as_deref(), Some("restart"));
        assert_eq!(
            k.kinds("web"),
            ["alert:died", "verdict:restart", "result:success"]
        );
        assert_eq!(k.last("web").actor, Actor::Responder);

        assert_eq!(due(&inc, done + quiet() - TimeDelta::milliseconds(1)), None);
        let (resolved, entry) = due(&inc, done + quiet() + TimeDelta::seconds(30)).unwrap();
        assert_eq!(resolved.state, IncidentState::Resolved);
        assert_eq!(resolved.resolved_at, Some(done + quiet()));
        assert_eq!(resolved.resolve_at, None);
        assert_eq!(resolved.closed_by, None);
        assert_eq!(entry.kind, "resolved");
        assert_eq!(entry.at, done + quiet());
        assert_eq!(due(&resolved, done + quiet() * 2), None);

        // After the resolution, the next death is a new incident.
        let key = resolved.key.clone();
        k.incidents.insert(key, resolved);
        assert_eq!(k.feed(&died("web", at(7, 0, 0, 0), None)), "opened");
        assert_eq!(k.get("web").id, "inc-2");
        assert_eq!(k.get("web").detected_at, at(7, 0, 0, 0));
    }

    #[test]
    fn a_crash_loop_stays_one_incident_and_escalates() {
        let mut k = Keeper::default();
        let steps: [(Envelope, &str, IncidentState); 6] = [
            (
                died("api", at(6, 0, 0, 0), None),
                "opened",
                IncidentState::Open,
            ),
            (
                restarted("api", at(6, 0, 2, 0)),
                "updated",
                IncidentState::Mitigated,
            ),
            (
                died("api", at(6, 0, 30, 0), None),
                "updated",
                IncidentState::Open,
            ),
            (
                restarted("api", at(6, 0, 33, 0)),
                "updated",
                IncidentState::Mitigated,
            ),
            (
                died("api", at(6, 1, 0, 0), None),
                "updated",
                IncidentState::Open,
            ),
            (
                escalation(
                    Some("api"),
                    EscalationKind::CircuitBreakerOpen,
                    at(6, 1, 1, 0),
                ),
                "updated",
                IncidentState::Escalated,
            ),
        ];
        for (i, (e, what, state)) in steps.iter().enumerate() {
            assert_eq!(k.feed(e), *what, "step {i}");
            assert_eq!(k.get("api").state, *state, "step {i}");
        }
        let inc = k.get("api").clone();
        assert_eq!(inc.id, "inc-1");
        assert_eq!((inc.alerts, inc.actions), (3, 2));
        assert_eq!(inc.first_action_at, Some(at(6, 0, 2, 0)));
        assert_eq!(inc.recovered_at, None, "a relapse clears the recovery");
        assert_eq!(inc.resolve_at, None);
        assert_eq!(inc.escalated_at, Some(at(6, 1, 1, 0)));
        assert_eq!(inc.escalation.as_deref(), Some("circuit_breaker_open"));
        assert_eq!(k.last("api").actor, Actor::Guard);
        assert_eq!(k.last("api").kind, "escalation:circuit_breaker_open");
        assert!(k.timelines[&inc.key][2].summary.starts_with("relapse: "));

        // A person fixes it; the monitor sees it run again.
        let back = at(6, 20, 0, 0);
        assert_eq!(k.feed(&recovered("api", AlertKind::Died, back)), "updated");
        let inc = k.get("api").clone();
        assert_eq!(inc.state, IncidentState::Mitigated);
        assert_eq!(inc.recovered_at, Some(back));
        assert_eq!(k.last("api").kind, "recovered");
        let (resolved, _) = due(&inc, back + quiet()).unwrap();
        assert_eq!(resolved.state, IncidentState::Resolved);
        assert_eq!(resolved.resolved_at, Some(back + quiet()));
    }

    #[test]
    fn a_relapse_of_an_escalated_incident_returns_to_escalated() {
        let mut k = Keeper::default();
        k.feed(&died("api", at(6, 0, 0, 0), None));
        k.feed(&escalation(
            Some("api"),
            EscalationKind::CrashLoop,
            at(6, 0, 1, 0),
        ));
        k.feed(&recovered("api", AlertKind::Died, at(6, 0, 5, 0)));
        assert_eq!(k.get("api").state, IncidentState::Mitigated);
        k.feed(&died("api", at(6, 0, 9, 0), None));
        assert_eq!(k.get("api").state, IncidentState::Escalated);
        assert_eq!(k.get("api").escalated_at, Some(at(6, 0, 1, 0)));
        assert_eq!(k.get("api").alerts, 2);
    }

    #[test]
    fn an_escalation_of_a_mitigated_incident_waits_for_a_relapse() {
        let mut k = Keeper::default();
        k.feed(&died("api", at(6, 0, 0, 0), None));
        k.feed(&recovered("api", AlertKind::Died, at(6, 0, 2, 0)));
        k.feed(&escalation(
            Some("api"),
            EscalationKind::CrashLoop,
            at(6, 0, 3, 0),
        ));
        let inc = k.get("api");
        assert_eq!(inc.state, IncidentState::Mitigated);
        assert_eq!(inc.escalated_at, Some(at(6, 0, 3, 0)));
        assert_eq!(inc.resolve_at, Some(at(6, 0, 2, 0) + quiet()));
        k.feed(&died("api", at(6, 0, 4, 0), None));
        assert_eq!(k.get("api").state, IncidentState::Escalated);
    }

    #[test]
    fn a_storm_opens_a_host_incident_listing_the_containers() {
        let mut k = Keeper::default();
        for (i, name) in ["web", "api", "db"].into_iter().enumerate() {
            let t = at(6, 0, i as u32, 0);
            assert_eq!(k.feed(&died(name, t, None)), "opened", "{name}");
        }
        assert_eq!(k.incidents.len(), 3);
        assert_eq!(k.get("db").id, "inc-3");

        let involved: Vec<String> = ["web", "api", "db", "api"].map(String::from).to_vec();
        let storm = escalation(None, EscalationKind::RemediationPaused, at(6, 0, 5, 0));
        assert_eq!(k.feed_storm(&storm, &involved), "opened");
        let host = k.incidents[&incident_key(HOST, None)].clone();
        assert_eq!(host.key, "docker-01/-");
        assert_eq!(host.container, None);
        assert_eq!(host.kind, "storm");
        assert_eq!(host.state, IncidentState::Open);
        assert_eq!(host.containers, ["api", "db", "web"]);
        assert_eq!(host.open_problems, ["storm"]);
        assert_eq!(host.detected_at, at(6, 0, 5, 0));
        assert_eq!(host.alerts, 0);
        let entry = &k.timelines[&host.key][0];
        assert_eq!(entry.kind, "escalation:remediation_paused");
        assert_eq!(entry.actor, Actor::Guard);
        // The containers' own incidents are untouched.
        assert_eq!(k.get("web").state, IncidentState::Open);

        // The storm is over once none of its containers fails any more.
        let cfg = IncidentConfig::default();
        assert_eq!(
            storm_over(&host, &["api".to_owned()], at(6, 3, 0, 0), &cfg),
            None
        );
        let (over, entry) = storm_over(&host, &["other".to_owned()], at(6, 4, 0, 0), &cfg).unwrap();
        assert_eq!(over.state, IncidentState::Mitigated);
        assert_eq!(over.recovered_at, Some(at(6, 4, 0, 0)));
        assert_eq!(over.resolve_at, Some(at(6, 4, 0, 0) + quiet()));
        assert_eq!(entry.kind, "storm_over");
        assert_eq!(storm_over(&over, &[], at(6, 5, 0, 0), &cfg), None);
    }

    #[test]
    fn a_storm_lists_at_most_fifty_containers_sorted_and_deduplicated() {
        let mut k = Keeper::default();
        let many: Vec<String> = (0..60).rev().map(|i| format!("svc-{i:02}")).collect();
        let storm = escalation(None, EscalationKind::RemediationPaused, at(6, 0, 0, 0));
        k.feed_storm(&storm, &many);
        let host = &k.incidents[&incident_key(HOST, None)];
        assert_eq!(host.containers.len(), CONTAINERS_MAX);
        assert_eq!(host.containers[0], "svc-00");
        assert_eq!(host.containers[49], "svc-49");
        // A second storm message adds names and keeps the bound and the order.
        let again = escalation(
            Some("aaa"),
            EscalationKind::RemediationPaused,
            at(6, 0, 9, 0),
        );
        assert_eq!(k.feed_storm(&again, &["svc-00".to_owned()]), "updated");
        let host = &k.incidents[&incident_key(HOST, None)];
        assert_eq!(host.containers.len(), CONTAINERS_MAX);
        assert_eq!(host.containers[..2], ["aaa", "svc-00"]);
        assert_eq!(host.containers[49], "svc-48");
    }

    #[test]
    fn refusals_are_counted_with_their_guard() {
        let mut k = Keeper::default();
        k.feed(&died("web", at(6, 0, 0, 0), None));
        let cases = [
            (Outcome::Skipped, Guard::Person, "refused:person", 1),
            (Outcome::Rejected, Guard::Breaker, "refused:breaker", 2),
            (Outcome::Skipped, Guard::Approval, "refused:approval", 3),
            (
                Outcome::Rejected,
                Guard::Protection,
                "refused:protection",
                4,
            ),
        ];
        for (i, (outcome, guard, kind, refusals)) in cases.into_iter().enumerate() {
            let t = at(6, 0, 1 + i as u32, 0);
            assert_eq!(k.feed(&result("web", outcome, Some(guard), t)), "updated");
            let inc = k.get("web");
            assert_eq!(inc.refusals, refusals, "{kind}");
            assert_eq!(inc.actions, 0, "{kind}");
            assert_eq!(inc.first_action_at, None, "{kind}");
            assert_eq!(inc.state, IncidentState::Open, "{kind}");
            assert_eq!(k.last("web").kind, kind);
            assert_eq!(k.last("web").actor, Actor::Guard);
        }
    }

    #[test]
    fn a_skip_because_the_problem_is_gone_is_a_recovery() {
        // After the monitor's recovery it stays mitigated, and it counts no refusal.
        let mut k = Keeper::default();
        k.feed(&died("web", at(6, 0, 0, 0), None));
        k.feed(&recovered("web", AlertKind::Died, at(6, 0, 3, 0)));
        let before = k.get("web").clone();
        assert_eq!(before.state, IncidentState::Mitigated);
        let skip = result(
            "web",
            Outcome::Skipped,
            Some(Guard::Problem),
            at(6, 0, 4, 0),
        );
        assert_eq!(k.feed(&skip), "updated");
        let inc = k.get("web");
        assert_eq!(inc.state, IncidentState::Mitigated);
        assert_eq!(inc.recovered_at, before.recovered_at);
        assert_eq!(inc.resolve_at, before.resolve_at);
        assert_eq!((inc.refusals, inc.actions), (0, 0));
        assert_eq!(k.last("web").kind, "skipped:problem");
        assert_eq!(k.last("web").actor, Actor::Guard);

        // Before any recovery was seen, the skip itself mitigates.
        let mut k = Keeper::default();
        k.feed(&died("web", at(6, 0, 0, 0), None));
        k.feed(&result(
            "web",
            Outcome::Skipped,
            Some(Guard::Problem),
            at(6, 0, 4, 0),
        ));
        assert_eq!(k.get("web").state, IncidentState::Mitigated);
        assert_eq!(k.get("web").recovered_at, Some(at(6, 0, 4, 0)));
    }

    #[test]
    fn results_count_only_what_reached_docker() {
        let mut k = Keeper::default();
        k.feed(&died("web", at(6, 0, 0, 0), None));
        let mut dry = res("web", Outcome::Skipped, None);
        dry.dry_run = true;
        dry.reason = "dry run: would restart".into();
        k.feed(&env(
            "responder",
            at(6, 0, 1, 0),
            Payload::RemediationComplete(dry),
        ));
        assert_eq!(k.last("web").kind, "dry_run");
        assert_eq!(
            (k.get("web").actions, k.get("web").first_action_at),
            (0, None)
        );

        k.feed(&result("web", Outcome::Failed, None, at(6, 0, 2, 0)));
        let inc = k.get("web");
        assert_eq!((inc.actions, inc.state), (1, IncidentState::Open));
        assert_eq!(inc.first_action_at, Some(at(6, 0, 2, 0)));
        assert_eq!(k.last("web").kind, "result:failed");

        // A success without a verification that it runs is no recovery.
        k.feed(&result("web", Outcome::Success, None, at(6, 0, 3, 0)));
        assert_eq!(k.get("web").state, IncidentState::Open);
        // Nor is one whose container turned out unhealthy.
        let mut sick = res("web", Outcome::Success, None);
        sick.verification = Some(Verification {
            running: true,
            healthy: Some(false),
            waited_ms: 30_000,
            detail: "running, unhealthy".into(),
        });
        k.feed(&env(
            "responder",
            at(6, 0, 4, 0),
            Payload::RemediationComplete(sick),
        ));
        assert_eq!(k.get("web").state, IncidentState::Open);

        k.feed(&result(
            "web",
            Outcome::Superseded,
            Some(Guard::Person),
            at(6, 0, 5, 0),
        ));
        assert_eq!(k.last("web").actor, Actor::Person);
        assert_eq!(k.last("web").kind, "superseded");
        let inc = k.get("web");
        assert_eq!((inc.actions, inc.refusals), (4, 0));
        assert_eq!(inc.first_action_at, Some(at(6, 0, 2, 0)));

        k.feed(&escalation(
            Some("web"),
            EscalationKind::RemediationFailed,
            at(6, 0, 6, 0),
        ));
        assert_eq!(k.get("web").state, IncidentState::Escalated);
        assert_eq!(k.last("web").actor, Actor::Responder);
    }

    #[test]
    fn user_actions_and_false_alarms_never_open_an_incident() {
        let cfg = IncidentConfig::default();
        let id = || -> String { panic!("no incident may open") };
        let mut flagged = alert("web", AlertKind::Died);
        flagged.user_initiated = true;
        let fa = FalseAlarm {
            container: Some(cref("web")),
            alert_id: "01A".into(),
            root_cause: "a person stopped it".into(),
            reason: "user_initiated".into(),
            confidence: 1.0,
            analysis_method: AnalysisMethod::Rules,
        };
        let none_opens = [
            user_action("web", AlertKind::Stopped, at(6, 0, 0, 0)),
            user_action("web", AlertKind::Paused, at(6, 0, 0, 0)),
            env(
                "monitor",
                at(6, 0, 0, 0),
                Payload::ContainerUnhealthy(flagged),
            ),
            env("analyzer", at(6, 0, 0, 0), Payload::FalseAlarm(fa.clone())),
            recovered("web", AlertKind::Died, at(6, 0, 0, 0)),
            request("web", AnalysisMethod::Llm, at(6, 0, 0, 0)),
            restarted("web", at(6, 0, 0, 0)),
            escalation(Some("web"), EscalationKind::ApprovalNeeded, at(6, 0, 0, 0)),
            escalation(Some("web"), EscalationKind::Other, at(6, 0, 0, 0)),
        ];
        for e in &none_opens {
            assert_eq!(
                apply(None, e, &cfg, id),
                Applied::Ignored,
                "{}",
                e.event_type()
            );
        }

        // With an incident open they are recorded, and change no state.
        let mut k = Keeper::default();
        k.feed(&died("web", at(6, 0, 0, 0), None));
        assert_eq!(
            k.feed(&user_action("web", AlertKind::Stopped, at(6, 0, 1, 0))),
            "updated"
        );
        assert_eq!(k.last("web").actor, Actor::Person);
        assert_eq!(k.last("web").kind, "person:stopped");
        k.feed(&env("analyzer", at(6, 0, 2, 0), Payload::FalseAlarm(fa)));
        assert_eq!(k.last("web").kind, "false_alarm");
        assert_eq!(k.last("web").actor, Actor::Rule);
        let inc = k.get("web");
        assert_eq!((inc.state, inc.alerts), (IncidentState::Open, 1));
        assert_eq!(inc.root_cause, None);
        assert_eq!(inc.last_event_at, at(6, 0, 2, 0));
    }

    #[test]
    fn a_reminder_opens_an_incident_when_none_is_open_and_counts_as_an_alert() {
        let mut a = alert("web", AlertKind::Unhealthy);
        a.reminder = true;
        a.severity = Severity::Warning;
        let reminder = env("monitor", at(6, 10, 0, 0), Payload::ContainerUnhealthy(a));
        let mut k = Keeper::default();
        assert_eq!(k.feed(&reminder), "opened");
        assert_eq!(k.last("web").kind, "reminder:unhealthy");
        assert_eq!(k.get("web").severity, Severity::Warning);
        let mut later = reminder.clone();
        later.timestamp = at(6, 20, 0, 0);
        assert_eq!(k.feed(&later), "updated");
        assert_eq!(
            k.feed(&failing("web", AlertKind::Unhealthy, at(6, 21, 0, 0))),
            "updated"
        );
        let inc = k.get("web");
        assert_eq!((inc.alerts, inc.state), (3, IncidentState::Open));
        assert_eq!(
            inc.severity,
            Severity::Critical,
            "the worst severity is kept"
        );
        assert_eq!(inc.id, "inc-1");
    }

    #[test]
    fn detection_time_comes_from_since_then_the_docker_event_then_the_envelope() {
        let (since, event, stamp) = (at(6, 0, 0, 0), at(6, 0, 1, 0), at(6, 0, 2, 0));
        let cases = [
            (Some(since), Some(event), since),
            (None, Some(event), event),
            (None, None, stamp),
        ];
        for (s, ev, want) in cases {
            let mut a = alert("web", AlertKind::Died);
            a.since = s;
            a.docker_event_time = ev;
            let e = env("monitor", stamp, Payload::ContainerUnhealthy(a));
            let applied = apply(None, &e, &IncidentConfig::default(), || "x".into());
            let Applied::Opened(inc, entry) = applied else {
                panic!("not opened");
            };
            assert_eq!(inc.detected_at, want);
            assert_eq!(inc.last_event_at, stamp);
            assert_eq!(entry.at, stamp);
            assert_eq!(entry.envelope_id, e.id);
        }
    }

    #[test]
    fn a_recovery_of_one_problem_leaves_the_others_open() {
        let mut k = Keeper::default();
        let mut high = alert("web", AlertKind::MemoryHigh);
        high.metrics = Some(crate::events::ContainerSample {
            memory_limit_bytes: Some(96 * 1024 * 1024),
            ..Default::default()
        });
        k.feed(&env(
            "monitor",
            at(6, 0, 0, 0),
            Payload::ContainerUnhealthy(high),
        ));
        assert_eq!(k.get("web").memory_limit_bytes, Some(96 * 1024 * 1024));
        k.feed(&failing("web", AlertKind::OomKilled, at(6, 1, 0, 0)));
        assert_eq!(k.get("web").open_problems, ["memory_high", "oom_killed"]);
        assert_eq!(
            k.get("web").kind,
            "memory_high",
            "the kind is what opened it"
        );

        // Memory "recovers" because the container died: not a recovery of the incident.
        k.feed(&recovered("web", AlertKind::MemoryHigh, at(6, 1, 1, 0)));
        assert_eq!(k.get("web").state, IncidentState::Open);
        assert_eq!(k.last("web").kind, "cleared:memory_high");
        k.feed(&recovered("web", AlertKind::OomKilled, at(6, 1, 5, 0)));
        assert_eq!(k.get("web").state, IncidentState::Mitigated);
        assert_eq!(k.get("web").recovered_at, Some(at(6, 1, 5, 0)));
        // A second recovery message changes nothing.
        assert_eq!(
            k.feed(&recovered("web", AlertKind::OomKilled, at(6, 1, 6, 0))),
            "ignored"
        );
    }

    #[test]
    fn an_oom_in_a_running_container_waits_for_no_recovery_message() {
        let mut k = Keeper::default();
        k.feed(&failing("web", AlertKind::Oom, at(6, 0, 0, 0)));
        assert!(k.get("web").open_problems.is_empty());
        k.feed(&recovered("web", AlertKind::MemoryHigh, at(6, 0, 9, 0)));
        assert_eq!(k.get("web").state, IncidentState::Mitigated);
    }

    #[test]
    fn the_first_root_cause_is_kept_and_a_person_sets_none() {
        let mut k = Keeper::default();
        k.feed(&died("web", at(6, 0, 0, 0), None));
        let mut person = req(
            "web",
            AnalysisMethod::Person,
            "restart requested from the dashboard",
        );
        person.requested_by = Some("dashboard:alice".into());
        person.problem = None;
        let e = env("dashboard", at(6, 0, 1, 0), Payload::PersonRequest(person));
        assert_eq!(k.feed(&e), "updated");
        assert_eq!(k.get("web").root_cause, None);
        assert_eq!(k.last("web").actor, Actor::Person);
        assert_eq!(k.last("web").kind, "person:restart");
        assert_eq!(k.last("web").summary, "dashboard:alice asked for restart");

        let verdicts = [
            (AnalysisMethod::Rules, "  ", Actor::Rule),
            (
                AnalysisMethod::Llm,
                "the database refused connections",
                Actor::Llm,
            ),
            (AnalysisMethod::RulesFallback, "it crashed", Actor::Rule),
        ];
        for (i, (method, cause, actor)) in verdicts.into_iter().enumerate() {
            let t = at(6, 0, 2 + i as u32, 0);
            k.feed(&env(
                "analyzer",
                t,
                Payload::RemediationNeeded(req("web", method, cause)),
            ));
            assert_eq!(k.last("web").actor, actor);
            assert_eq!(k.last("web").kind, "verdict:restart");
        }
        assert_eq!(
            k.get("web").root_cause.as_deref(),
            Some("the database refused connections")
        );
    }

    #[test]
    fn an_escalation_with_no_incident_opens_an_escalated_one() {
        let mut k = Keeper::default();
        let e = escalation(
            Some("vault"),
            EscalationKind::ProtectedContainer,
            at(6, 0, 0, 0),
        );
        assert_eq!(k.feed(&e), "opened");
        let inc = k.get("vault");
        assert_eq!(inc.kind, "protected_container");
        assert_eq!(inc.state, IncidentState::Escalated);
        assert_eq!(inc.escalated_at, Some(at(6, 0, 0, 0)));
        assert_eq!(inc.alerts, 0);
        k.feed(&escalation(
            Some("vault"),
            EscalationKind::ApprovalNeeded,
            at(6, 0, 1, 0),
        ));
        assert_eq!(k.last("vault").kind, "approval_needed");
        assert_eq!(k.get("vault").state, IncidentState::Escalated);
        k.feed(&failing("vault", AlertKind::Unhealthy, at(6, 0, 2, 0)));
        k.feed(&recovered("vault", AlertKind::Unhealthy, at(6, 0, 3, 0)));
        assert_eq!(k.get("vault").state, IncidentState::Mitigated);
    }

    #[test]
    fn host_alerts_make_a_host_wide_incident() {
        let mut k = Keeper::default();
        let key = incident_key(HOST, None);
        assert_eq!(
            k.feed(&host_alert(
                HostAlertKind::DiskPressure,
                false,
                at(6, 0, 0, 0)
            )),
            "opened"
        );
        assert_eq!(k.incidents[&key].kind, "disk_pressure");
        assert_eq!(k.incidents[&key].containers, Vec::<String>::new());
        let wide = env(
            "analyzer",
            at(6, 0, 1, 0),
            Payload::Escalation(Escalation {
                kind: EscalationKind::HostWide,
                severity: Severity::Critical,
                container: None,
                summary: "host docker-01: disk".into(),
                detail: "clean up".into(),
                proposal: None,
            }),
        );
        assert_eq!(k.feed(&wide), "updated");
        let inc = &k.incidents[&key];
        assert_eq!(inc.state, IncidentState::Escalated);
        assert_eq!(inc.severity, Severity::Critical);
        assert_eq!(k.timelines[&key][1].actor, Actor::Rule);
        assert_eq!(
            k.timelines[&key][1].summary,
            "host docker-01: disk (clean up)"
        );
        k.feed(&host_alert(
            HostAlertKind::DiskPressure,
            true,
            at(6, 5, 0, 0),
        ));
        assert_eq!(k.incidents[&key].state, IncidentState::Mitigated);
        assert_eq!(k.incidents[&key].recovered_at, Some(at(6, 5, 0, 0)));
    }

    #[test]
    fn an_incident_of_another_key_is_left_alone() {
        let cfg = IncidentConfig::default();
        let Applied::Opened(web, _) = apply(None, &died("web", at(6, 0, 0, 0), None), &cfg, || {
            "w".into()
        }) else {
            panic!("not opened");
        };
        let other = died("api", at(6, 0, 1, 0), None);
        assert_eq!(
            apply(Some(&web), &other, &cfg, || "x".into()),
            Applied::Ignored
        );
        let beat = env(
            "monitor",
            at(6, 0, 1, 0),
            Payload::ContainerMetrics(crate::events::MetricsBatch::default()),
        );
        assert_eq!(
            apply(Some(&web), &beat, &cfg, || "x".into()),
            Applied::Ignored
        );
    }

    #[test]
    fn a_person_closes_an_unresolved_incident() {
        let cfg = IncidentConfig::default();
        let inc = apply(None, &died("web", at(6, 0, 0, 0), None), &cfg, || {
            "i".into()
        })
        .into_parts()
        .unwrap()
        .0;
        let (closed, entry) = close(&inc, "alice", at(6, 30, 0, 0)).unwrap();
        assert_eq!(closed.state, IncidentState::Resolved);
        assert_eq!(closed.closed_by.as_deref(), Some("alice"));
        assert_eq!(closed.resolved_at, Some(at(6, 30, 0, 0)));
        assert_eq!(closed.recovered_at, None);
        assert_eq!(closed.last_event_at, at(6, 30, 0, 0));
        assert_eq!(entry.actor, Actor::Person);
        assert_eq!(entry.kind, "closed");
        assert_eq!(entry.summary, "closed by alice");
        assert_eq!(close(&closed, "bob", at(6, 31, 0, 0)), None);
        assert_eq!(due(&closed, at(9, 0, 0, 0)), None);
        // Everything but a new failure is ignored once it is resolved.
        let late = recovered("web", AlertKind::Died, at(6, 32, 0, 0));
        assert_eq!(
            apply(Some(&closed), &late, &cfg, || "x".into()),
            Applied::Ignored
        );
    }

    /// The key, host and container [`key_of`] should find.
    type Want<'a> = Option<(&'a str, &'a str, Option<&'a str>)>;

    #[test]
    fn key_of_names_the_container_or_the_host() {
        let web = Some(("docker-01/web", "docker-01", Some("web")));
        let host = Some(("docker-01/-", "docker-01", None));
        let mut remote = req("web", AnalysisMethod::Rules, "x");
        remote.target_host = "docker-02".into();
        let mut cleanup = req("web", AnalysisMethod::Rules, "disk");
        cleanup.container = None;
        cleanup.action = Action::Cleanup;
        let mut slash = alert("web", AlertKind::Died);
        slash.container.name = "/web".into();
        let mut nameless = alert("web", AlertKind::Died);
        nameless.container.name = String::new();
        let t = at(6, 0, 0, 0);
        let fold = crate::events::Fold {
            container: cref("web"),
            alert_id: "a".into(),
            kind: AlertKind::Died,
            into: "b".into(),
            reason: "same".into(),
        };
        let beat = crate::events::Heartbeat {
            instance: "m".into(),
            version: "1".into(),
            started_at: t,
            uptime_secs: 1,
            interval_secs: 10,
            degraded: vec![],
        };
        let cases: Vec<(Envelope, Want<'_>)> = vec![
            (died("web", t, None), web),
            (recovered("web", AlertKind::Died, t), web),
            (user_action("web", AlertKind::Stopped, t), web),
            (env("monitor", t, Payload::ContainerUnhealthy(slash)), web),
            (
                env("monitor", t, Payload::ContainerUnhealthy(nameless)),
                Some(("docker-01/id-web", "docker-01", Some("id-web"))),
            ),
            (host_alert(HostAlertKind::MemoryPressure, false, t), host),
            (host_alert(HostAlertKind::MemoryPressure, true, t), host),
            (request("web", AnalysisMethod::Rules, t), web),
            (
                env("analyzer", t, Payload::RemediationNeeded(remote.clone())),
                Some(("docker-02/web", "docker-02", Some("web"))),
            ),
            (
                env("dashboard", t, Payload::PersonRequest(remote)),
                Some(("docker-02/web", "docker-02", Some("web"))),
            ),
            (
                env("analyzer", t, Payload::RemediationNeeded(cleanup)),
                host,
            ),
            (restarted("web", t), web),
            (
                escalation(Some("web"), EscalationKind::CircuitBreakerOpen, t),
                web,
            ),
            (
                escalation(None, EscalationKind::CircuitBreakerOpen, t),
                host,
            ),
            (
                escalation(Some("web"), EscalationKind::RemediationPaused, t),
                host,
            ),
            (escalation(Some("web"), EscalationKind::HostWide, t), host),
            (env("analyzer", t, Payload::AlertFolded(fold)), None),
            (
                env("monitor", t, Payload::HostMetrics(HostSample::default())),
                None,
            ),
            (env("monitor", t, Payload::Heartbeat(beat)), None),
        ];
        for (e, want) in cases {
            let want = want.map(|(k, h, c)| (k.to_owned(), h.to_owned(), c.map(str::to_owned)));
            assert_eq!(key_of(&e), want, "{}", e.to_json());
        }
    }

    fn incident(id: &str, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Incident {
        let e = died("web", from, Some(from));
        let mut inc = apply(None, &e, &IncidentConfig::default(), || id.into())
            .into_parts()
            .unwrap()
            .0;
        inc.recovered_at = to;
        inc.state = if to.is_some() {
            IncidentState::Resolved
        } else {
            IncidentState::Open
        };
        inc
    }

    #[test]
    fn reliability_merges_overlaps_and_counts_what_is_ongoing() {
        let now = at(12, 0, 0, 0);
        let window = Duration::from_secs(3600);
        let incidents = [
            // Outside the window altogether.
            incident("old", at(9, 0, 0, 0), Some(at(9, 10, 0, 0))),
            // Began before the window, recovered in it: 5 min in the window.
            incident("early", at(10, 50, 0, 0), Some(at(11, 5, 0, 0))),
            // Two overlapping ones, 11:20-11:30 and 11:25-11:35: 15 min together.
            incident("a", at(11, 20, 0, 0), Some(at(11, 30, 0, 0))),
            incident("b", at(11, 25, 0, 0), Some(at(11, 35, 0, 0))),
            // Ongoing since 11:50: 10 min.
            incident("now", at(11, 50, 0, 0), None),
        ];
        let r = reliability(&incidents, now, window);
        assert_eq!(r.window_secs, 3600);
        assert_eq!(r.downtime_secs, 30.0 * 60.0);
        assert!((r.availability - 0.5).abs() < 1e-9, "{}", r.availability);
        assert_eq!(r.incidents, 3, "a, b and now began in the window");
        // Recovered in the window: early (15 min), a (10 min), b (10 min).
        let mttr = r.mttr_secs.unwrap();
        assert!((mttr - (35.0 * 60.0 / 3.0)).abs() < 1e-9, "{mttr}");

        // A closed incident that never recovered is down until it was closed.
        let mut closed = incident("c", at(11, 0, 0, 0), None);
        closed.state = IncidentState::Resolved;
        closed.resolved_at = Some(at(11, 6, 0, 0));
        let r = reliability(&[closed], now, window);
        assert_eq!(r.downtime_secs, 360.0);
        assert_eq!(r.mttr_secs, None);

        let quiet = reliability(&[], now, window);
        assert_eq!(
            (quiet.availability, quiet.downtime_secs, quiet.incidents),
            (1.0, 0.0, 0)
        );
        let empty = reliability(&incidents, now, Duration::ZERO);
        assert_eq!((empty.availability, empty.downtime_secs), (1.0, 0.0));
        let all_down = reliability(&[incident("x", at(0, 0, 0, 0), None)], now, window);
        assert_eq!(all_down.availability, 0.0);
    }

    /// Replaces every time the postmortem writes with a fixed mask.
    fn mask(s: &str) -> String {
        let rfc = regex::Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z").unwrap();
        let tod = regex::Regex::new(r"\b\d{2}:\d{2}:\d{2}\.\d{3}\b").unwrap();
        let day = regex::Regex::new(r"\(\d{4}-\d{2}-\d{2}\)").unwrap();
        let s = rfc.replace_all(s, "<time>");
        let s = tod.replace_all(&s, "<tod>");
        day.replace_all(&s, "(<day>)").into_owned()
    }

    /// An OOM kill of `web` (96 MiB limit): alert, verdict, a refusal, a restart, the quiet
    /// period.
    fn oom_story() -> (Incident, Vec<TimelineEntry>) {
        let mut k = Keeper::default();
        let mut a = alert("web", AlertKind::OomKilled);
        a.since = Some(at(6, 0, 0, 0));
        a.summary = "container web was killed by the OOM killer | exit 137".into();
        a.state = Some(ContainerState {
            status: "exited".into(),
            exit_code: Some(137),
            oom_killed: true,
            memory_limit_bytes: Some(96 * 1024 * 1024),
            ..ContainerState::default()
        });
        k.feed(&env(
            "monitor",
            at(6, 0, 0, 250),
            Payload::ContainerUnhealthy(a),
        ));
        let mut r = req(
            "web",
            AnalysisMethod::Llm,
            "memory grew past the *96 MiB* limit",
        );
        r.problem = Some(Problem::new(ProblemKind::OomKilled));
        k.feed(&env(
            "analyzer",
            at(6, 0, 1, 0),
            Payload::RemediationNeeded(r),
        ));
        k.feed(&result(
            "web",
            Outcome::Rejected,
            Some(Guard::Backoff),
            at(6, 0, 2, 0),
        ));
        k.feed(&restarted("web", at(6, 1, 12, 0)));
        let inc = k.get("web").clone();
        let mut timeline = k.timelines[&inc.key].clone();
        let (inc, entry) = due(&inc, at(7, 0, 0, 0)).unwrap();
        timeline.push(entry);
        (inc, timeline)
    }

    #[test]
    fn the_postmortem_has_every_section_and_the_oom_follow_up() {
        let (inc, timeline) = oom_story();
        let mut before = incident("inc-0", at(5, 0, 0, 0), Some(at(5, 0, 4, 200)));
        before.last_action = Some("restart".into());
        let text = postmortem(&inc, &timeline, &[before]);
        let want = "\
# Incident inc-1: oom_killed of web on docker-01

## Summary

- State: resolved
- Severity: critical
- Detected: <time>
- First action: <time>
- Verified recovery: <time>
- Resolved: <time>
- Closed by: nobody: it resolved after the quiet period with no relapse
- Alerts: 1, actions: 1, refusals: 1
- Exit code: 137 (SIGKILL: the OOM killer or `docker kill`)
- Memory limit: 96 MiB

## Impact

Down for 1 min 12 s, from detection to verified recovery.

## Timeline

| time (UTC) | who | what |
|---|---|---|
| <tod> | monitor | `alert:oom_killed` container web was killed by the OOM killer \\| exit 137 |
| <tod> | llm | `verdict:restart` memory grew past the \\*96 MiB\\* limit (confidence 0.90) |
| <tod> | guard | `refused:backoff` restart: Rejected |
| <tod> | responder | `result:success` restart: restarted; running within 0.4 s |
| <tod> | rule | `resolved` the recovery held through the quiet period |

## Root cause

memory grew past the \\*96 MiB\\* limit

## Actions taken

- <tod> `result:success` (responder): restart: restarted; running within 0.4 s

## What the guards refused

- <tod> `backoff`: restart: Rejected

## Follow-ups

- Raise the 96 MiB memory limit of web, or find what grew.
- Check that the guards were right to hold back (1 refusal above).
- This container had 1 incident before. Last incident: restarted and recovered in 4.2 s (<day>).
- What to check: ";
        let masked = mask(&text);
        assert!(masked.starts_with(want), "{masked}");
        assert!(masked.contains("\n## Runbook\n\n### oom_killed\n\nThe kernel killed it"));
        assert!(
            masked.contains("`docker stats --no-stream web`"),
            "{masked}"
        );
        let sections = [
            "# Incident ",
            "## Summary",
            "## Impact",
            "## Timeline",
            "## Root cause",
            "## Actions taken",
            "## What the guards refused",
            "## Follow-ups",
            "## Runbook",
        ];
        let mut from = 0;
        for s in sections {
            let i = text[from..]
                .find(s)
                .unwrap_or_else(|| panic!("{s} missing or out of order"));
            from += i + s.len();
        }
        assert_eq!(
            postmortem(&inc, &timeline, &[]),
            postmortem(&inc, &timeline, &[])
        );
        assert!(text.contains("- Detected: 2026-11-22T06:00:00.000Z"));
        assert!(text.contains("| 06:00:00.250 | monitor |"));
    }

    #[test]
    fn the_postmortem_of_a_crash_loop_asks_for_the_breaker_reset() {
        let mut k = Keeper::default();
        k.feed(&died("api", at(6, 0, 0, 0), None));
        k.feed(&escalation(
            Some("api"),
            EscalationKind::CircuitBreakerOpen,
            at(6, 0, 1, 0),
        ));
        let inc = k.get("api").clone();
        let text = postmortem(&inc, &k.timelines[&inc.key], &[]);
        assert!(text.contains("- Fix the cause, then `hemostat-responder reset-breaker api`."));
        assert!(text.contains("Ongoing: still down, since detection."));
        assert!(text.contains("- Closed by: nobody yet"));
        assert!(text.contains("- Escalated: 2026-11-22T06:00:01.000Z (breaker open)"));
        assert!(text.contains("## Root cause\n\nNot analysed.\n"));
        assert!(text.contains("## Actions taken\n\nNone.\n"));
        assert!(text.contains("## What the guards refused\n\nNothing.\n"));
        assert!(text.contains("- Close this incident once it is handled."));
        assert!(text.contains("### died\n\n"));
        assert!(text.contains("### circuit_breaker_open\n\n"));

        let (closed, entry) = close(&inc, "alice", at(6, 5, 0, 0)).unwrap();
        let mut timeline = k.timelines[&inc.key].clone();
        timeline.push(entry);
        let text = postmortem(&closed, &timeline, &[]);
        assert!(text.contains("- Closed by: alice"));
        assert!(text.contains("Unknown: it was closed 5 min 0 s after detection"));
        assert!(mask(&text).contains("- <tod> `closed` (person): closed by alice\n"));
    }

    #[test]
    fn a_storm_postmortem_names_the_host_and_its_containers() {
        let mut k = Keeper::default();
        let storm = escalation(None, EscalationKind::RemediationPaused, at(6, 0, 0, 0));
        k.feed_storm(&storm, &["web".to_owned(), "api".to_owned()]);
        let inc = k.incidents[&incident_key(HOST, None)].clone();
        let text = postmortem(&inc, &k.timelines[&inc.key], &[]);
        assert!(text.starts_with("# Incident inc-1: storm of the host on docker-01\n"));
        assert!(text.contains("- Containers: api, web\n"));
        assert!(text.contains("### storm\n\nMany containers"));
        assert!(!text.contains("### remediation_paused"));
    }

    #[test]
    fn advice_is_short_practical_and_known_for_every_kind() {
        let kinds = [
            "died",
            "oom_killed",
            "oom",
            "unhealthy",
            "crash_loop",
            "cpu_high",
            "memory_high",
            "anomaly",
            "disk_pressure",
            "memory_pressure",
            "cpu_pressure",
            "storm",
            "protected_container",
            "circuit_breaker_open",
            "remediation_failed",
            "host_wide",
        ];
        let fallback = advice("something_else");
        assert!(!fallback.is_empty());
        let mut seen = std::collections::BTreeSet::new();
        for kind in kinds {
            let text = advice(kind);
            assert_ne!(text, fallback, "{kind} has no advice of its own");
            assert!(seen.insert(text), "{kind} repeats another kind's advice");
            let sentences = text.matches(". ").count() + 1;
            assert!(
                (2..=4).contains(&sentences),
                "{kind}: {sentences} sentences"
            );
            assert!(text.ends_with('.'), "{kind}");
            assert!(!text.contains('\n') && !text.contains("  "), "{kind}");
            let lower = text.to_lowercase();
            assert!(
                !lower.contains("issue") && !lower.contains("ticket"),
                "{kind}"
            );
        }
        assert!(advice("died").contains("137"));
        assert!(advice("oom_killed").contains("docker stats"));
    }

    #[test]
    fn the_history_line_summarises_the_last_incidents_newest_first() {
        let mut restarted = incident("1", at(6, 0, 0, 0), Some(at(6, 0, 4, 200)));
        restarted.last_action = Some("restart".into());
        let by_itself = incident("2", at(5, 0, 0, 0), Some(at(5, 0, 12, 0)));
        let mut breaker = incident("3", at(4, 0, 0, 0), None);
        breaker.last_action = Some("restart".into());
        breaker.escalation = Some("circuit_breaker_open".into());
        let mut closed = incident("4", at(3, 0, 0, 0), None);
        closed.closed_by = Some("alice".into());
        closed.state = IncidentState::Resolved;
        let past = [closed, by_itself, breaker, restarted];
        assert_eq!(
            history_line(&past, 3),
            "Last 3 incidents: restarted and recovered in 4.2 s (2026-11-22), recovered in \
             12 s without action (2026-11-22), restarted and escalated (breaker open) \
             (2026-11-22)"
        );
        assert_eq!(
            history_line(&past[..1], 3),
            "Last incident: closed by alice (2026-11-22)"
        );
        assert_eq!(history_line(&[], 3), "No earlier incidents.");
        let rec = PastRecord::of(&past[3]);
        assert_eq!(rec.action, "restart");
        assert_eq!(rec.outcome, "recovered");
        assert_eq!(rec.recovery_secs, Some(4.2));
        assert_eq!(
            PastRecord::of(&incident("5", at(1, 0, 0, 0), None)).outcome,
            "ongoing"
        );
    }

    #[test]
    fn an_incident_round_trips_through_serde_with_stable_names() {
        let (inc, timeline) = oom_story();
        let json = serde_json::to_string(&inc).unwrap();
        assert_eq!(serde_json::from_str::<Incident>(&json).unwrap(), inc);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["state"], "resolved");
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["kind"], "oom_killed");
        assert_eq!(v["memory_limit_bytes"], 96 * 1024 * 1024);
        for field in [
            "id",
            "key",
            "host",
            "container",
            "detected_at",
            "first_action_at",
            "recovered_at",
            "resolved_at",
            "escalated_at",
            "closed_by",
            "containers",
            "alerts",
            "actions",
            "refusals",
            "root_cause",
            "last_event_at",
            "resolve_at",
            "exit_code",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        for e in &timeline {
            let back: TimelineEntry =
                serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap();
            assert_eq!(&back, e);
        }
        let entry = serde_json::to_value(&timeline[1]).unwrap();
        assert_eq!(entry["actor"], "llm");

        // A record written before the bookkeeping fields existed still reads.
        let mut old = v.clone();
        for f in ["open_problems", "last_action", "escalation"] {
            old.as_object_mut().unwrap().remove(f);
        }
        let back: Incident = serde_json::from_value(old).unwrap();
        assert!(back.open_problems.is_empty());
        assert_eq!(back.last_action, None);
        for (state, name) in [
            (IncidentState::Open, "open"),
            (IncidentState::Mitigated, "mitigated"),
            (IncidentState::Resolved, "resolved"),
            (IncidentState::Escalated, "escalated"),
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), name);
            assert_eq!(state.as_str(), name);
        }
    }

    #[test]
    fn summaries_are_one_bounded_line() {
        let cases = [
            ("a\nb\r\n\tc", 300, "a b c"),
            ("  padded  ", 300, "padded"),
            ("abcdef", 4, "abc…"),
            ("abcd", 4, "abcd"),
            ("évè", 2, "é…"),
            ("x\u{202E}y", 10, "xy"),
        ];
        for (input, max, want) in cases {
            assert_eq!(one_line(input, max), want, "{input:?}");
        }
        let mut a = alert("web", AlertKind::Died);
        a.summary = "boom ".repeat(200);
        let e = env("monitor", at(6, 0, 0, 0), Payload::ContainerUnhealthy(a));
        let (_, entry) = apply(None, &e, &IncidentConfig::default(), || "i".into())
            .into_parts()
            .unwrap();
        assert_eq!(entry.summary.chars().count(), SUMMARY_MAX_CHARS);
        assert!(entry.summary.ends_with('…'));
    }

    #[test]
    fn durations_and_sizes_read_well() {
        let durations = [
            (0.0, "0.0 s"),
            (4.24, "4.2 s"),
            (12.7, "12 s"),
            (72.0, "1 min 12 s"),
            (3600.0 * 2.0 + 300.0, "2 h 5 min"),
            (86_400.0 * 3.0 + 3600.0 * 4.0, "3 d 4 h"),
            (-5.0, "0.0 s"),
            (f64::NAN, "0.0 s"),
        ];
        for (secs, want) in durations {
            assert_eq!(format_duration(secs), want, "{secs}");
        }
        assert_eq!(format_mib(96 * 1024 * 1024), "96 MiB");
        assert_eq!(format_mib(100_000_000), "95.4 MiB");
        assert_eq!(
            exit_code_meaning(137),
            "SIGKILL: the OOM killer or `docker kill`"
        );
        assert_eq!(
            exit_code_meaning(131),
            "killed by a signal (the code minus 128)"
        );
    }
}
