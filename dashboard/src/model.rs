//! The pure part: turning envelopes read from the streams into what the page shows (overview
//! numbers, container rows, timeline items, remediations, agents). No I/O here, so every rule
//! is unit-tested with plain values.
//!
//! Inputs are always newest first, as `XREVRANGE` returns them, and bounded by the caller.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use hemostat_common::events::{
    AlertKind, ContainerRef, Envelope, Heartbeat, Outcome, Payload, Severity,
};
use serde::Serialize;

/// Heartbeats missed before an instance counts as down (the heartbeat key's TTL is the same).
pub const MISSED_BEATS: i64 = 3;

// ---------------------------------------------------------------------------------------------
// Describing one envelope
// ---------------------------------------------------------------------------------------------

/// The container an envelope is about, if any.
pub fn container_of(env: &Envelope) -> Option<&ContainerRef> {
    match &env.payload {
        Payload::ContainerUnhealthy(a)
        | Payload::ContainerUserAction(a)
        | Payload::ContainerRecovered(a) => Some(&a.container),
        Payload::RemediationNeeded(r) | Payload::PersonRequest(r) => r.container.as_ref(),
        Payload::FalseAlarm(f) => f.container.as_ref(),
        Payload::AlertFolded(f) => Some(&f.container),
        Payload::RemediationComplete(r) => r.container.as_ref(),
        Payload::Escalation(e) => e.container.as_ref(),
        _ => None,
    }
}

/// The host an envelope is about: a request's target host, else the envelope's host.
pub fn host_of(env: &Envelope) -> &str {
    match &env.payload {
        Payload::RemediationNeeded(r) | Payload::PersonRequest(r) => &r.target_host,
        _ => &env.host,
    }
}

/// The finer kind inside the event type: the alert kind, the escalation kind, the action.
pub fn kind_of(env: &Envelope) -> String {
    match &env.payload {
        Payload::ContainerUnhealthy(a)
        | Payload::ContainerUserAction(a)
        | Payload::ContainerRecovered(a) => a.kind.as_str().to_owned(),
        Payload::HostUnhealthy(h) | Payload::HostRecovered(h) => wire(&h.kind),
        Payload::RemediationNeeded(r) | Payload::PersonRequest(r) => wire(&r.action),
        Payload::RemediationComplete(r) => wire(&r.action),
        Payload::Escalation(e) => wire(&e.kind),
        Payload::FalseAlarm(_) => "false_alarm".into(),
        Payload::AlertFolded(f) => f.kind.as_str().to_owned(),
        Payload::ContainerMetrics(_) | Payload::HostMetrics(_) => "metrics".into(),
        Payload::Heartbeat(_) => "heartbeat".into(),
    }
}

/// The wire spelling of a small enum value (`Outcome::Success` → `success`), taken from its
/// serde form so the names are spelled once, in `events.rs`.
pub fn wire<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// How bad an event is. Events without a severity of their own get one from what they say: a
/// failed remediation is critical, a refusal or a request a warning.
pub fn severity_of(env: &Envelope) -> Severity {
    match &env.payload {
        Payload::ContainerUnhealthy(a)
        | Payload::ContainerUserAction(a)
        | Payload::ContainerRecovered(a) => a.severity,
        Payload::HostUnhealthy(h) | Payload::HostRecovered(h) => h.severity,
        Payload::Escalation(e) => e.severity,
        Payload::RemediationNeeded(_) | Payload::PersonRequest(_) => Severity::Warning,
        Payload::RemediationComplete(r) => match r.outcome {
            Outcome::Failed => Severity::Critical,
            Outcome::Rejected => Severity::Warning,
            Outcome::Success | Outcome::Skipped | Outcome::Superseded => Severity::Info,
        },
        Payload::Heartbeat(h) if !h.degraded.is_empty() => Severity::Warning,
        Payload::FalseAlarm(_)
        | Payload::AlertFolded(_)
        | Payload::ContainerMetrics(_)
        | Payload::HostMetrics(_)
        | Payload::Heartbeat(_) => Severity::Info,
    }
}

/// One line saying what happened.
pub fn summary_of(env: &Envelope) -> String {
    let name = |c: &Option<ContainerRef>| {
        c.as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "the host".into())
    };
    match &env.payload {
        Payload::ContainerUnhealthy(a)
        | Payload::ContainerUserAction(a)
        | Payload::ContainerRecovered(a) => a.summary.clone(),
        Payload::HostUnhealthy(h) | Payload::HostRecovered(h) => h.summary.clone(),
        Payload::Escalation(e) => e.summary.clone(),
        Payload::RemediationNeeded(r) => format!(
            "{} {}: {} ({}, confidence {:.2})",
            wire(&r.action),
            name(&r.container),
            r.root_cause,
            wire(&r.analysis_method),
            r.confidence
        ),
        Payload::PersonRequest(r) => format!(
            "{} {} asked by {}",
            wire(&r.action),
            name(&r.container),
            r.requested_by.as_deref().unwrap_or("a person")
        ),
        Payload::FalseAlarm(f) => format!(
            "false alarm for {}: {} ({})",
            name(&f.container),
            f.root_cause,
            wire(&f.analysis_method)
        ),
        Payload::AlertFolded(f) => format!(
            "{} alert for {} folded into {}: {}",
            f.kind.as_str(),
            f.container.name,
            f.into,
            f.reason
        ),
        Payload::RemediationComplete(r) => format!(
            "{} {}: {}{}: {}",
            wire(&r.action),
            name(&r.container),
            wire(&r.outcome),
            if r.dry_run { " (dry run)" } else { "" },
            r.reason
        ),
        Payload::ContainerMetrics(m) => format!(
            "{} container sample(s) in {} ms",
            m.samples.len(),
            m.collect_ms
        ),
        Payload::HostMetrics(h) => format!(
            "host CPU {}, memory {:.1} %, disk {:.1} %",
            h.cpu_percent
                .map(|c| format!("{c:.1} %"))
                .unwrap_or_else(|| "n/a".into()),
            h.memory_percent,
            h.disk_percent
        ),
        Payload::Heartbeat(h) if h.degraded.is_empty() => format!("{} is alive", h.instance),
        Payload::Heartbeat(h) => format!(
            "{} is alive but degraded: {}",
            h.instance,
            h.degraded.join("; ")
        ),
    }
}

/// Metrics and heartbeats: frequent and dull, so the timeline leaves them out unless asked.
pub fn is_noise(env: &Envelope) -> bool {
    matches!(
        env.payload,
        Payload::ContainerMetrics(_) | Payload::HostMetrics(_) | Payload::Heartbeat(_)
    )
}

// ---------------------------------------------------------------------------------------------
// Timeline
// ---------------------------------------------------------------------------------------------

/// One row of the timeline (also what the live feed sends for each event).
#[derive(Debug, Clone, Serialize)]
pub struct TimelineItem {
    pub id: String,
    pub timestamp: DateTime<Utc>,
    pub channel: &'static str,
    pub event_type: &'static str,
    pub host: String,
    pub container: Option<String>,
    pub kind: String,
    pub severity: Severity,
    pub summary: String,
    pub noise: bool,
    /// The full envelope, as it is on the wire.
    pub envelope: serde_json::Value,
}

impl TimelineItem {
    pub fn new(env: &Envelope) -> TimelineItem {
        TimelineItem {
            id: env.id.clone(),
            timestamp: env.timestamp,
            channel: env.channel().name(),
            event_type: env.event_type(),
            host: host_of(env).to_owned(),
            container: container_of(env).map(|c| c.name.clone()),
            kind: kind_of(env),
            severity: severity_of(env),
            summary: summary_of(env),
            noise: is_noise(env),
            envelope: serde_json::to_value(env).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The timeline's query parameters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TimelineFilter {
    /// Exact host.
    pub host: Option<String>,
    /// Part of the container name, case-insensitive.
    pub container: Option<String>,
    /// The event type (`remediation_complete`) or the kind inside it (`oom_killed`).
    pub kind: Option<String>,
    /// The least severity shown: `warning` shows warnings and critical events.
    pub severity: Option<Severity>,
    /// Also show metrics and heartbeats (asking for their `kind` does too).
    #[serde(default)]
    pub noise: bool,
    /// Most items returned.
    pub limit: Option<usize>,
}

/// Most items one timeline answer holds.
pub const TIMELINE_MAX: usize = 1000;
/// Items when the request does not say.
pub const TIMELINE_DEFAULT: usize = 200;

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl TimelineFilter {
    pub fn matches(&self, item: &TimelineItem) -> bool {
        let kind = nonempty(&self.kind);
        if item.noise && !self.noise && kind.is_none_or(|k| k != item.event_type) {
            return false;
        }
        if let Some(h) = nonempty(&self.host)
            && h != item.host
        {
            return false;
        }
        if let Some(c) = nonempty(&self.container) {
            let want = c.to_lowercase();
            if !item
                .container
                .as_deref()
                .is_some_and(|n| n.to_lowercase().contains(&want))
            {
                return false;
            }
        }
        if let Some(k) = kind
            && k != item.event_type
            && k != item.kind
        {
            return false;
        }
        if let Some(min) = self.severity
            && item.severity < min
        {
            return false;
        }
        true
    }

    /// Whether metrics or heartbeats can pass this filter.
    pub fn wants_noise(&self) -> bool {
        self.noise
            || nonempty(&self.kind)
                .is_some_and(|k| ["container_metrics", "host_metrics", "heartbeat"].contains(&k))
    }

    pub fn limit(&self) -> usize {
        self.limit
            .unwrap_or(TIMELINE_DEFAULT)
            .clamp(1, TIMELINE_MAX)
    }
}

/// Merges several newest-first lists into one, newest first, each envelope once (the same
/// envelope can sit in a channel stream and the audit stream).
pub fn merge_newest_first(lists: Vec<Vec<Envelope>>) -> Vec<Envelope> {
    let mut all: Vec<Envelope> = lists.into_iter().flatten().collect();
    // ULIDs sort by creation time; the timestamp decides first in case clocks disagree.
    all.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then_with(|| b.id.cmp(&a.id)));
    let mut seen = HashSet::new();
    all.retain(|e| seen.insert(e.id.clone()));
    all
}

/// The timeline: every event, newest first, filtered, at most `filter.limit()`.
pub fn timeline(events: &[Envelope], filter: &TimelineFilter) -> Vec<TimelineItem> {
    events
        .iter()
        .map(TimelineItem::new)
        .filter(|i| filter.matches(i))
        .take(filter.limit())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What was read, and whether it reaches back far enough
// ---------------------------------------------------------------------------------------------

/// Recent envelopes of the channel streams, newest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub health: Vec<Envelope>,
    pub needed: Vec<Envelope>,
    pub false_alarms: Vec<Envelope>,
    pub complete: Vec<Envelope>,
    pub alerts: Vec<Envelope>,
    pub metrics: Vec<Envelope>,
    /// How many entries were asked of each stream: a stream that returned that many may hold
    /// older ones that were not read.
    pub count: usize,
}

impl History {
    /// True when `list` may not reach back to `since` (it is full and its oldest is newer).
    pub fn truncated(&self, list: &[Envelope], since: DateTime<Utc>) -> bool {
        list.len() >= self.count && list.last().is_some_and(|e| e.timestamp > since)
    }
}

// ---------------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------------

/// Whether a container's circuit breaker is open (from `hemostat:breaker:<host>:<name>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Breaker {
    pub open: bool,
    /// Seconds until it closes by itself; `None` when closed or when it has no expiry.
    pub closes_in_secs: Option<i64>,
}

impl Breaker {
    /// From the key's `PTTL`: -2 absent, -1 no expiry, else milliseconds left.
    pub fn from_pttl(pttl: i64) -> Breaker {
        match pttl {
            -2 => Breaker::default(),
            -1 => Breaker {
                open: true,
                closes_in_secs: None,
            },
            ms => Breaker {
                open: true,
                closes_in_secs: Some((ms + 999) / 1000),
            },
        }
    }
}

/// The last thing the responder did to a container.
#[derive(Debug, Clone, Serialize)]
pub struct LastAction {
    pub action: String,
    pub outcome: String,
    pub reason: String,
    pub dry_run: bool,
    pub at: DateTime<Utc>,
}

/// One point of a sparkline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Milliseconds since the epoch.
    pub t: i64,
    pub v: f64,
}

/// One row of the containers table, per host and container name.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerRow {
    pub host: String,
    pub name: String,
    pub id: String,
    pub image: String,
    /// `running`, `exited`, `paused`, ... or `unknown`.
    pub state: String,
    /// `ok`, `unhealthy`, `stopped by a person`, `paused by a person`, `unknown`.
    pub health: String,
    pub unhealthy: bool,
    /// The open problem's kind (`oom_killed`) and summary, while unhealthy.
    pub problem: Option<String>,
    pub problem_summary: Option<String>,
    /// Docker's restart count, from the latest state seen.
    pub restart_count: Option<i64>,
    /// Remediations hemostat attempted in the last 24 h (success or failed).
    pub remediations_24h: usize,
    /// CPU in Docker's CLI scale (100 = one core), oldest first.
    pub cpu: Vec<Point>,
    /// Memory in bytes, oldest first.
    pub memory: Vec<Point>,
    pub memory_limit_bytes: Option<u64>,
    pub breaker: Breaker,
    pub last_action: Option<LastAction>,
    pub last_event_at: Option<DateTime<Utc>>,
    pub protected: bool,
}

fn row<'a>(
    rows: &'a mut BTreeMap<(String, String), ContainerRow>,
    host: &str,
    c: &ContainerRef,
) -> &'a mut ContainerRow {
    let r = rows
        .entry((host.to_owned(), c.name.clone()))
        .or_insert_with(|| ContainerRow {
            host: host.to_owned(),
            name: c.name.clone(),
            id: c.id.clone(),
            image: c.image.clone(),
            state: "unknown".into(),
            health: "unknown".into(),
            unhealthy: false,
            problem: None,
            problem_summary: None,
            restart_count: None,
            remediations_24h: 0,
            cpu: Vec::new(),
            memory: Vec::new(),
            memory_limit_bytes: None,
            breaker: Breaker::default(),
            last_action: None,
            last_event_at: None,
            protected: false,
        });
    if r.image.is_empty() {
        r.image.clone_from(&c.image);
    }
    r
}

/// Every container seen in the metrics, health alerts and results read, with its state.
/// Breakers are filled in by the caller (they need Redis).
pub fn containers(h: &History, points: usize, now: DateTime<Utc>) -> Vec<ContainerRow> {
    let mut rows: BTreeMap<(String, String), ContainerRow> = BTreeMap::new();
    // When each host's latest sample round was taken, and who was in it (running then).
    let mut latest_round: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut in_latest_round: HashSet<(String, String)> = HashSet::new();

    for env in &h.metrics {
        let Payload::ContainerMetrics(batch) = &env.payload else {
            continue;
        };
        let first_round = !latest_round.contains_key(&env.host);
        if first_round {
            latest_round.insert(env.host.clone(), env.timestamp);
        }
        for s in &batch.samples {
            let c = ContainerRef {
                id: s.id.clone(),
                name: s.name.clone(),
                ..Default::default()
            };
            let r = row(&mut rows, &env.host, &c);
            if first_round {
                in_latest_round.insert((env.host.clone(), s.name.clone()));
            }
            let t = env.timestamp.timestamp_millis();
            if r.memory.len() < points {
                r.memory.push(Point {
                    t,
                    v: s.memory_usage_bytes as f64,
                });
                if r.memory_limit_bytes.is_none() {
                    r.memory_limit_bytes = s.memory_limit_bytes;
                }
            }
            if let Some(cpu) = s.cpu_percent
                && r.cpu.len() < points
            {
                r.cpu.push(Point { t, v: cpu });
            }
        }
    }
    for r in rows.values_mut() {
        // Read newest first; drawn oldest first.
        r.cpu.reverse();
        r.memory.reverse();
        if in_latest_round.contains(&(r.host.clone(), r.name.clone())) {
            r.state = "running".into();
            r.health = "ok".into();
        }
    }

    let day_ago = now - Duration::hours(24);
    let mut decided: HashSet<(String, String)> = HashSet::new();
    for env in &h.health {
        let (Payload::ContainerUnhealthy(a)
        | Payload::ContainerUserAction(a)
        | Payload::ContainerRecovered(a)) = &env.payload
        else {
            continue;
        };
        let key = (env.host.clone(), a.container.name.clone());
        let round = latest_round.get(&env.host).copied();
        let r = row(&mut rows, &env.host, &a.container);
        if r.restart_count.is_none() {
            r.restart_count = a.state.as_ref().map(|s| s.restart_count);
        }
        if !decided.insert(key) {
            continue;
        }
        // The newest health event of this container decides its health.
        r.last_event_at = Some(env.timestamp);
        r.protected = a.protected;
        let newer_than_samples = round.is_none_or(|t| env.timestamp >= t) || r.state == "unknown";
        match &env.payload {
            Payload::ContainerUnhealthy(_) => {
                r.unhealthy = true;
                r.health = "unhealthy".into();
                r.problem = Some(a.kind.as_str().to_owned());
                r.problem_summary = Some(a.summary.clone());
                if newer_than_samples {
                    r.state = a
                        .state
                        .as_ref()
                        .map(|s| s.status.clone())
                        .unwrap_or_else(|| match a.kind {
                            AlertKind::Died | AlertKind::OomKilled => "exited".into(),
                            _ => "running".into(),
                        });
                }
            }
            Payload::ContainerUserAction(_) => {
                let (health, state) = match a.kind {
                    AlertKind::Paused => ("paused by a person", "paused"),
                    AlertKind::Unpaused => ("ok", "running"),
                    _ => ("stopped by a person", "exited"),
                };
                r.health = health.into();
                if newer_than_samples {
                    r.state = a
                        .state
                        .as_ref()
                        .map(|s| s.status.clone())
                        .unwrap_or_else(|| state.into());
                }
            }
            _ => {
                r.health = "ok".into();
                if newer_than_samples {
                    r.state = "running".into();
                }
            }
        }
    }

    for env in &h.complete {
        let Payload::RemediationComplete(res) = &env.payload else {
            continue;
        };
        let Some(c) = &res.container else { continue };
        let r = row(&mut rows, &env.host, c);
        if r.last_action.is_none() {
            r.last_action = Some(LastAction {
                action: wire(&res.action),
                outcome: wire(&res.outcome),
                reason: res.reason.clone(),
                dry_run: res.dry_run,
                at: env.timestamp,
            });
        }
        if env.timestamp >= day_ago && matches!(res.outcome, Outcome::Success | Outcome::Failed) {
            r.remediations_24h += 1;
        }
    }
    rows.into_values().collect()
}

// ---------------------------------------------------------------------------------------------
// Overview
// ---------------------------------------------------------------------------------------------

/// Outcomes of remediation decisions in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcomes {
    pub success: usize,
    pub failed: usize,
    pub rejected: usize,
    pub skipped: usize,
    pub superseded: usize,
}

/// The numbers at the top of the page.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub containers_monitored: usize,
    pub unhealthy_now: usize,
    /// `host/name` of each unhealthy container.
    pub unhealthy: Vec<String>,
    pub hosts: Vec<String>,
    /// Actions attempted in the last 24 h (outcome success or failed).
    pub remediations_24h: usize,
    pub outcomes_24h: Outcomes,
    /// success / (success + failed); `None` when nothing was attempted.
    pub success_rate_24h: Option<f64>,
    pub false_alarms_24h: usize,
    pub escalations_24h: usize,
    /// Mean seconds from the alert's detection to the verified recovery of the successful
    /// remediations in the window whose alert and request were both read.
    pub mean_time_to_recovery_secs: Option<f64>,
    pub recoveries_measured: usize,
    pub agents_alive: usize,
    pub agents_total: usize,
    /// True when a stream held more than was read, so the 24 h numbers count only part of it.
    pub partial: bool,
    pub generated_at: DateTime<Utc>,
}

/// Computes the overview from the history, the container rows and the agents.
pub fn overview(
    h: &History,
    rows: &[ContainerRow],
    agents: &[AgentRow],
    now: DateTime<Utc>,
) -> Overview {
    let day_ago = now - Duration::hours(24);
    let mut outcomes = Outcomes::default();
    let mut recovery_secs = Vec::new();
    let needed: HashMap<&str, &Envelope> = h.needed.iter().map(|e| (e.id.as_str(), e)).collect();
    let alerts: HashMap<&str, &Envelope> = h.health.iter().map(|e| (e.id.as_str(), e)).collect();
    for env in h.complete.iter().filter(|e| e.timestamp >= day_ago) {
        let Payload::RemediationComplete(r) = &env.payload else {
            continue;
        };
        match r.outcome {
            Outcome::Success => outcomes.success += 1,
            Outcome::Failed => outcomes.failed += 1,
            Outcome::Rejected => outcomes.rejected += 1,
            Outcome::Skipped => outcomes.skipped += 1,
            Outcome::Superseded => outcomes.superseded += 1,
        }
        if r.outcome != Outcome::Success {
            continue;
        }
        let alert = needed
            .get(r.request_id.as_str())
            .and_then(|req| match &req.payload {
                Payload::RemediationNeeded(q) => alerts.get(q.alert_id.as_str()),
                _ => None,
            });
        if let Some(alert) = alert {
            let secs = (env.timestamp - alert.timestamp).num_milliseconds() as f64 / 1000.0;
            if secs >= 0.0 {
                recovery_secs.push(secs);
            }
        }
    }
    let attempted = outcomes.success + outcomes.failed;
    let count_since = |list: &[Envelope]| list.iter().filter(|e| e.timestamp >= day_ago).count();
    let mut hosts: Vec<String> = rows.iter().map(|r| r.host.clone()).collect();
    hosts.sort();
    hosts.dedup();
    Overview {
        containers_monitored: rows.len(),
        unhealthy_now: rows.iter().filter(|r| r.unhealthy).count(),
        unhealthy: rows
            .iter()
            .filter(|r| r.unhealthy)
            .map(|r| format!("{}/{}", r.host, r.name))
            .collect(),
        hosts,
        remediations_24h: attempted,
        success_rate_24h: (attempted > 0).then(|| outcomes.success as f64 / attempted as f64),
        outcomes_24h: outcomes,
        // The false-alarm stream also records folded alerts; only verdicts count here.
        false_alarms_24h: h
            .false_alarms
            .iter()
            .filter(|e| e.timestamp >= day_ago && matches!(e.payload, Payload::FalseAlarm(_)))
            .count(),
        escalations_24h: count_since(&h.alerts),
        mean_time_to_recovery_secs: (!recovery_secs.is_empty())
            .then(|| recovery_secs.iter().sum::<f64>() / recovery_secs.len() as f64),
        recoveries_measured: recovery_secs.len(),
        agents_alive: agents
            .iter()
            .filter(|a| a.status != AgentStatus::Down)
            .count(),
        agents_total: agents.len(),
        partial: [&h.complete, &h.false_alarms, &h.alerts]
            .iter()
            .any(|l| h.truncated(l, day_ago)),
        generated_at: now,
    }
}

// ---------------------------------------------------------------------------------------------
// Remediations
// ---------------------------------------------------------------------------------------------

/// One entry of the audit trail: a responder decision joined with the analyzer's request.
#[derive(Debug, Clone, Serialize)]
pub struct RemediationRow {
    pub id: String,
    pub at: DateTime<Utc>,
    pub host: String,
    pub container: Option<String>,
    pub action: String,
    pub outcome: String,
    /// The guard that refused or skipped it (`storm`, `person`, ...), if one did.
    pub guard: Option<String>,
    pub reason: String,
    pub dry_run: bool,
    pub duration_ms: u64,
    pub verification: Option<String>,
    /// From the request, when it was read: `rules`, `llm`, `rules_fallback`.
    pub analysis_method: Option<String>,
    pub confidence: Option<f64>,
    pub root_cause: Option<String>,
    pub fallback_reason: Option<String>,
    pub request_id: String,
    pub envelope: serde_json::Value,
}

/// Turns the responder's decisions into rows, looking each request up in `needed`.
pub fn remediations(complete: &[Envelope], needed: &[Envelope]) -> Vec<RemediationRow> {
    let needed: HashMap<&str, &Envelope> = needed.iter().map(|e| (e.id.as_str(), e)).collect();
    complete
        .iter()
        .filter_map(|env| {
            let Payload::RemediationComplete(r) = &env.payload else {
                return None;
            };
            let req = needed
                .get(r.request_id.as_str())
                .and_then(|e| match &e.payload {
                    Payload::RemediationNeeded(q) => Some(q),
                    _ => None,
                });
            Some(RemediationRow {
                id: env.id.clone(),
                at: env.timestamp,
                host: env.host.clone(),
                container: r.container.as_ref().map(|c| c.name.clone()),
                action: wire(&r.action),
                outcome: wire(&r.outcome),
                guard: r.guard.map(|g| g.as_str().to_owned()),
                reason: r.reason.clone(),
                dry_run: r.dry_run,
                duration_ms: r.duration_ms,
                verification: r.verification.as_ref().map(|v| v.detail.clone()),
                analysis_method: req.map(|q| wire(&q.analysis_method)),
                confidence: req.map(|q| q.confidence),
                root_cause: req.map(|q| q.root_cause.clone()),
                fallback_reason: req.and_then(|q| q.fallback_reason.clone()),
                request_id: r.request_id.clone(),
                envelope: serde_json::to_value(env).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------------------------

/// Whether an agent instance is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Up,
    /// Alive, but says something is wrong (Redis, Docker).
    Degraded,
    /// Its heartbeat is stale or its key expired.
    Down,
}

/// One agent instance.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub agent: String,
    pub instance: String,
    pub host: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub uptime_secs: u64,
    pub interval_secs: u64,
    pub last_seen: DateTime<Utc>,
    pub age_secs: i64,
    pub status: AgentStatus,
    pub degraded: Vec<String>,
}

/// Whether a heartbeat sent at `sent` every `interval_secs` is still fresh at `now`.
pub fn is_stale(sent: DateTime<Utc>, interval_secs: u64, now: DateTime<Utc>) -> bool {
    let allowed = Duration::seconds(interval_secs.max(1) as i64 * MISSED_BEATS);
    now - sent > allowed
}

fn heartbeat(env: &Envelope) -> Option<&Heartbeat> {
    match &env.payload {
        Payload::Heartbeat(h) => Some(h),
        _ => None,
    }
}

/// Every agent instance: those whose heartbeat key exists (`live`), and those seen in the
/// heartbeat stream (`history`, newest first) whose key is gone. A gone instance is shown as
/// down unless a newer instance of the same agent on the same host is alive (a restart or an
/// upgrade replaced it), so the list does not fill with the ghosts of old processes.
pub fn agents(live: &[Envelope], history: &[Envelope], now: DateTime<Utc>) -> Vec<AgentRow> {
    let mut latest: BTreeMap<String, (&Envelope, &Heartbeat, bool)> = BTreeMap::new();
    for env in live {
        if let Some(hb) = heartbeat(env) {
            latest.insert(hb.instance.clone(), (env, hb, true));
        }
    }
    for env in history {
        if let Some(hb) = heartbeat(env) {
            latest
                .entry(hb.instance.clone())
                .or_insert((env, hb, false));
        }
    }
    let mut rows: Vec<AgentRow> = latest
        .into_values()
        .map(|(env, hb, key_present)| {
            let status = if !key_present || is_stale(env.timestamp, hb.interval_secs, now) {
                AgentStatus::Down
            } else if hb.degraded.is_empty() {
                AgentStatus::Up
            } else {
                AgentStatus::Degraded
            };
            AgentRow {
                agent: env.agent.clone(),
                instance: hb.instance.clone(),
                host: env.host.clone(),
                version: hb.version.clone(),
                started_at: hb.started_at,
                uptime_secs: hb.uptime_secs,
                interval_secs: hb.interval_secs,
                last_seen: env.timestamp,
                age_secs: (now - env.timestamp).num_seconds().max(0),
                status,
                degraded: hb.degraded.clone(),
            }
        })
        .collect();
    let alive: Vec<(String, String, DateTime<Utc>)> = rows
        .iter()
        .filter(|r| r.status != AgentStatus::Down)
        .map(|r| (r.agent.clone(), r.host.clone(), r.started_at))
        .collect();
    rows.retain(|r| {
        r.status != AgentStatus::Down
            || !alive
                .iter()
                .any(|(a, h, started)| *a == r.agent && *h == r.host && *started >= r.last_seen)
    });
    rows.sort_by(|a, b| {
        (a.agent.as_str(), a.host.as_str(), a.instance.as_str()).cmp(&(
            b.agent.as_str(),
            b.host.as_str(),
            b.instance.as_str(),
        ))
    });
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::events::{
        Action, AnalysisMethod, ContainerAlert, ContainerSample, ContainerState, Detection,
        Escalation, EscalationKind, FalseAlarm, MetricsBatch, RemediationRequest,
        RemediationResult,
    };

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn at(secs: i64, host: &str, payload: Payload) -> Envelope {
        let mut e = Envelope::new("test", host, payload);
        e.timestamp = t0() + Duration::seconds(secs);
        e
    }

    fn cref(name: &str) -> ContainerRef {
        ContainerRef {
            id: format!("id-{name}"),
            name: name.into(),
            image: "img".into(),
            ..Default::default()
        }
    }

    fn alert(name: &str, kind: AlertKind, severity: Severity) -> ContainerAlert {
        ContainerAlert {
            container: cref(name),
            kind,
            severity,
            user_initiated: matches!(kind, AlertKind::Stopped | AlertKind::Paused),
            reminder: false,
            detected_by: Detection::Event,
            summary: format!("{name} {}", kind.as_str()),
            state: Some(ContainerState {
                status: "exited".into(),
                restart_count: 3,
                ..Default::default()
            }),
            metrics: None,
            breach: None,
            since: None,
            docker_event_time: None,
            protected: false,
            logs: None,
        }
    }

    fn request(name: &str, alert_id: &str, host: &str) -> Payload {
        Payload::RemediationNeeded(RemediationRequest {
            requested_by: None,
            container: Some(cref(name)),
            target_host: host.into(),
            action: Action::Restart,
            root_cause: "oom".into(),
            reason: "rule".into(),
            confidence: 0.9,
            analysis_method: AnalysisMethod::Llm,
            fallback_reason: None,
            alert_id: alert_id.into(),
            problem: None,
        })
    }

    fn result(name: &str, request_id: &str, outcome: Outcome) -> Payload {
        Payload::RemediationComplete(RemediationResult {
            container: Some(cref(name)),
            request_id: request_id.into(),
            action: Action::Restart,
            outcome,
            reason: "because".into(),
            verification: None,
            duration_ms: 100,
            dry_run: false,
            guard: None,
            problem: None,
        })
    }

    fn samples(names: &[(&str, f64)]) -> Payload {
        Payload::ContainerMetrics(MetricsBatch {
            samples: names
                .iter()
                .map(|(n, cpu)| ContainerSample {
                    id: format!("id-{n}"),
                    name: (*n).into(),
                    cpu_percent: Some(*cpu),
                    memory_usage_bytes: 1000,
                    ..Default::default()
                })
                .collect(),
            collect_ms: 5,
        })
    }

    /// A heartbeat of `instance`, whose agent is the part before the first `-`.
    fn heartbeat_env(instance: &str, sent: i64, started: i64, degraded: &[&str]) -> Envelope {
        let mut e = at(
            sent,
            "h1",
            Payload::Heartbeat(Heartbeat {
                instance: instance.into(),
                version: "0.1.0".into(),
                started_at: t0() + Duration::seconds(started),
                uptime_secs: (sent - started) as u64,
                interval_secs: 10,
                degraded: degraded.iter().map(|s| s.to_string()).collect(),
            }),
        );
        e.agent = instance.split('-').next().unwrap().to_owned();
        e
    }

    /// A fleet: api died, was restarted (success) 30 s later; cache was stopped by a person
    /// (false alarm); worker's restart failed; db is only seen in metrics.
    fn fleet() -> History {
        let died = at(
            0,
            "h1",
            Payload::ContainerUnhealthy(alert("api", AlertKind::OomKilled, Severity::Critical)),
        );
        let req = at(1, "h1", request("api", &died.id, "h1"));
        let done = at(30, "h1", result("api", &req.id, Outcome::Success));
        let recovered = at(
            31,
            "h1",
            Payload::ContainerRecovered(alert("api", AlertKind::Died, Severity::Info)),
        );
        let stop = at(
            40,
            "h1",
            Payload::ContainerUserAction(alert("cache", AlertKind::Stopped, Severity::Info)),
        );
        let fa = at(
            41,
            "h1",
            Payload::FalseAlarm(FalseAlarm {
                container: Some(cref("cache")),
                alert_id: stop.id.clone(),
                root_cause: "a person".into(),
                reason: "user".into(),
                confidence: 1.0,
                analysis_method: AnalysisMethod::Rules,
            }),
        );
        let wdied = at(
            50,
            "h2",
            Payload::ContainerUnhealthy(alert("worker", AlertKind::Died, Severity::Critical)),
        );
        let wreq = at(51, "h2", request("worker", &wdied.id, "h2"));
        let wdone = at(60, "h2", result("worker", &wreq.id, Outcome::Failed));
        let esc = at(
            61,
            "h2",
            Payload::Escalation(Escalation {
                proposal: None,
                kind: EscalationKind::RemediationFailed,
                severity: Severity::Critical,
                container: Some(cref("worker")),
                summary: "worker restart failed".into(),
                detail: String::new(),
            }),
        );
        let m1 = at(20, "h1", samples(&[("api", 1.0), ("db", 2.0)]));
        let m2 = at(45, "h1", samples(&[("api", 3.0), ("db", 4.0)]));
        History {
            health: vec![wdied, stop, recovered, died],
            needed: vec![wreq, req],
            false_alarms: vec![fa],
            complete: vec![wdone, done],
            alerts: vec![esc],
            metrics: vec![m2, m1],
            count: 500,
        }
    }

    #[test]
    fn containers_combine_metrics_alerts_and_results() {
        let h = fleet();
        let rows = containers(&h, 60, t0() + Duration::seconds(100));
        let names: Vec<_> = rows
            .iter()
            .map(|r| format!("{}/{}", r.host, r.name))
            .collect();
        assert_eq!(names, ["h1/api", "h1/cache", "h1/db", "h2/worker"]);
        let api = &rows[0];
        assert_eq!(api.state, "running");
        assert_eq!(api.health, "ok");
        assert!(!api.unhealthy);
        assert_eq!(api.restart_count, Some(3));
        assert_eq!(api.remediations_24h, 1);
        assert_eq!(api.last_action.as_ref().unwrap().outcome, "success");
        let cpu: Vec<f64> = api.cpu.iter().map(|p| p.v).collect();
        assert_eq!(cpu, [1.0, 3.0], "oldest first");
        let cache = &rows[1];
        assert_eq!(cache.health, "stopped by a person");
        assert_eq!(cache.state, "exited");
        assert!(!cache.unhealthy);
        let db = &rows[2];
        assert_eq!((db.state.as_str(), db.health.as_str()), ("running", "ok"));
        let worker = &rows[3];
        assert!(worker.unhealthy);
        assert_eq!(worker.problem.as_deref(), Some("died"));
        assert_eq!(worker.state, "exited");
        assert_eq!(worker.last_action.as_ref().unwrap().outcome, "failed");
    }

    #[test]
    fn sparklines_keep_the_newest_points() {
        let h = History {
            metrics: (0..10)
                .rev()
                .map(|i| at(i, "h1", samples(&[("api", i as f64)])))
                .collect(),
            count: 500,
            ..Default::default()
        };
        let rows = containers(&h, 3, t0());
        let cpu: Vec<f64> = rows[0].cpu.iter().map(|p| p.v).collect();
        assert_eq!(cpu, [7.0, 8.0, 9.0]);
    }

    #[test]
    fn overview_numbers() {
        let h = fleet();
        let now = t0() + Duration::seconds(100);
        let rows = containers(&h, 60, now);
        let agents = agents(&[heartbeat_env("monitor-1", 95, 0, &[])], &[], now);
        let o = overview(&h, &rows, &agents, now);
        assert_eq!(o.containers_monitored, 4);
        assert_eq!(o.unhealthy_now, 1);
        assert_eq!(o.unhealthy, ["h2/worker"]);
        assert_eq!(o.remediations_24h, 2);
        assert_eq!(o.success_rate_24h, Some(0.5));
        assert_eq!(o.false_alarms_24h, 1);
        assert_eq!(o.escalations_24h, 1);
        // api: alert at 0 s, verified recovery reported at 30 s.
        assert_eq!(o.mean_time_to_recovery_secs, Some(30.0));
        assert_eq!(o.recoveries_measured, 1);
        assert_eq!((o.agents_alive, o.agents_total), (1, 1));
        assert!(!o.partial);
        assert_eq!(o.hosts, ["h1", "h2"]);
    }

    #[test]
    fn overview_counts_only_the_last_24_hours_and_says_when_partial() {
        let h = fleet();
        let later = t0() + Duration::hours(25);
        let o = overview(&h, &[], &[], later);
        assert_eq!(o.remediations_24h, 0);
        assert_eq!(o.success_rate_24h, None);
        assert_eq!(o.mean_time_to_recovery_secs, None);
        assert_eq!(o.false_alarms_24h, 0);
        let mut full = fleet();
        full.count = 2;
        let o = overview(&full, &[], &[], t0() + Duration::seconds(100));
        assert!(o.partial, "the complete stream returned as many as asked");
    }

    #[test]
    fn remediations_join_the_request() {
        let h = fleet();
        let rows = remediations(&h.complete, &h.needed);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].container.as_deref(), Some("worker"));
        assert_eq!(rows[0].outcome, "failed");
        assert_eq!(rows[1].analysis_method.as_deref(), Some("llm"));
        assert_eq!(rows[1].confidence, Some(0.9));
        assert_eq!(rows[1].root_cause.as_deref(), Some("oom"));
        let alone = remediations(&h.complete, &[]);
        assert_eq!(alone[1].analysis_method, None);
    }

    #[test]
    fn staleness_is_three_missed_beats() {
        let sent = t0();
        assert!(!is_stale(sent, 10, sent + Duration::seconds(30)));
        assert!(is_stale(sent, 10, sent + Duration::seconds(31)));
        assert!(
            is_stale(sent, 0, sent + Duration::seconds(4)),
            "interval 0 counts as 1 s"
        );
    }

    #[test]
    fn agents_up_degraded_down_and_replaced() {
        let now = t0() + Duration::seconds(1000);
        let live = [
            heartbeat_env("monitor-new", 995, 900, &[]),
            heartbeat_env("alert-1", 990, 0, &["redis: refused"]),
            // The key still exists but the beat is old: a frozen process.
            heartbeat_env("analyzer-1", 900, 0, &[]),
        ];
        let history = [
            heartbeat_env("monitor-new", 985, 900, &[]),
            heartbeat_env("responder-1", 500, 0, &[]),
            heartbeat_env("monitor-old", 880, 0, &[]),
        ];
        let rows = agents(&live, &history, now);
        let by = |i: &str| rows.iter().find(|r| r.instance == i).map(|r| r.status);
        assert_eq!(by("monitor-new"), Some(AgentStatus::Up));
        assert_eq!(by("alert-1"), Some(AgentStatus::Degraded));
        assert_eq!(by("analyzer-1"), Some(AgentStatus::Down));
        assert_eq!(by("responder-1"), Some(AgentStatus::Down));
        // monitor-old went silent before monitor-new started: a restart replaced it.
        assert_eq!(by("monitor-old"), None);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].agent, "alert", "sorted by agent");
    }

    #[test]
    fn timeline_filters() {
        let h = fleet();
        let all = merge_newest_first(vec![
            h.health.clone(),
            h.needed.clone(),
            h.false_alarms.clone(),
            h.complete.clone(),
            h.alerts.clone(),
            h.metrics.clone(),
            h.complete.clone(),
        ]);
        assert_eq!(all.len(), 12, "duplicates removed");
        assert!(all.windows(2).all(|w| w[0].timestamp >= w[1].timestamp));
        let f = |q: TimelineFilter| timeline(&all, &q);
        let quiet = f(TimelineFilter::default());
        assert_eq!(quiet.len(), 10, "metrics left out by default");
        assert_eq!(quiet[0].event_type, "escalation");
        assert_eq!(
            f(TimelineFilter {
                noise: true,
                ..Default::default()
            })
            .len(),
            12
        );
        assert!(!TimelineFilter::default().wants_noise());
        assert!(
            TimelineFilter {
                kind: Some("heartbeat".into()),
                ..Default::default()
            }
            .wants_noise()
        );
        let metrics = f(TimelineFilter {
            kind: Some("container_metrics".into()),
            ..Default::default()
        });
        assert_eq!(metrics.len(), 2);
        let h2 = f(TimelineFilter {
            host: Some("h2".into()),
            ..Default::default()
        });
        assert_eq!(h2.len(), 4);
        let api = f(TimelineFilter {
            container: Some("AP".into()),
            ..Default::default()
        });
        assert_eq!(api.len(), 4);
        let oom = f(TimelineFilter {
            kind: Some("oom_killed".into()),
            ..Default::default()
        });
        assert_eq!(oom.len(), 1);
        assert_eq!(oom[0].envelope["data"]["kind"], "oom_killed");
        let crit = f(TimelineFilter {
            severity: Some(Severity::Critical),
            ..Default::default()
        });
        // api died, worker died, worker's failed restart, the escalation.
        assert_eq!(crit.len(), 4);
        let warn = f(TimelineFilter {
            severity: Some(Severity::Warning),
            ..Default::default()
        });
        assert_eq!(warn.len(), 6, "plus the two requests");
        let one = f(TimelineFilter {
            limit: Some(1),
            ..Default::default()
        });
        assert_eq!(one.len(), 1);
        let empty_means_any = f(TimelineFilter {
            host: Some(" ".into()),
            ..Default::default()
        });
        assert_eq!(empty_means_any.len(), 10);
    }

    #[test]
    fn descriptions() {
        let h = fleet();
        let done = TimelineItem::new(&h.complete[0]);
        assert_eq!(done.severity, Severity::Critical);
        assert_eq!(done.kind, "restart");
        assert_eq!(done.container.as_deref(), Some("worker"));
        assert!(done.summary.contains("failed"), "{}", done.summary);
        let esc = TimelineItem::new(&h.alerts[0]);
        assert_eq!(esc.kind, "remediation_failed");
        assert_eq!(Breaker::from_pttl(-2), Breaker::default());
        assert_eq!(Breaker::from_pttl(-1).closes_in_secs, None);
        assert_eq!(Breaker::from_pttl(1500).closes_in_secs, Some(2));
    }
}
