//! What people are told: a [`Notification`] per event worth telling, built from the bus's
//! envelopes, keyed by a fingerprint (host + container + kind) so that problems of different
//! containers are never folded into one another.

use chrono::{DateTime, Utc};
use hemostat_common::events::{
    Action, AlertKind, AnalysisMethod, ContainerRef, Envelope, Outcome, Payload, Severity,
};
use serde::{Deserialize, Serialize};

/// Firing or resolved, as in Alertmanager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Resolved,
}

/// One thing to tell people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `host/container/kind`: what dedupe, repeat and resolve are keyed on.
    pub fingerprint: String,
    pub status: Status,
    pub severity: Severity,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    /// `died`, `remediation_restart_success`, `escalation_circuit_breaker_open`, ...
    pub kind: String,
    /// One line: what happened.
    pub title: String,
    /// A sentence or two of detail.
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<AnalysisMethod>,
    pub dry_run: bool,
    pub at: DateTime<Utc>,
    /// The envelope it came from.
    pub event_id: String,
    pub event_type: String,
    /// PagerDuty-worthy: an escalation or a failed remediation.
    pub page: bool,
    /// An event, not a state: a remediation result or an escalation. Told every time it
    /// happens (never folded as "still firing"), and never resolved.
    pub one_off: bool,
    /// A proposed action waiting for a person (approve mode): messages link to its decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
}

/// Which optional sources to tell people about.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    /// Crash notices from `hemostat:health_alert` (died, OOM, unhealthy), and their recoveries.
    pub crashes: bool,
    /// `hemostat:false_alarm` verdicts.
    pub false_alarms: bool,
}

fn fingerprint(host: &str, container: Option<&ContainerRef>, kind: &str) -> String {
    let who = container.map(|c| c.name.as_str()).unwrap_or("-");
    format!("{host}/{who}/{kind}")
}

fn name(c: Option<&ContainerRef>) -> &str {
    c.map(|c| c.name.as_str()).unwrap_or("the host")
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Rejected => "was refused",
        Outcome::Skipped => "was skipped",
        Outcome::Superseded => "was overtaken by a person's action",
    }
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Restart => "restart",
        Action::Stop => "stop",
        Action::Start => "start",
        Action::Cleanup => "cleanup",
        Action::None => "no action",
    }
}

/// Builds the notification for an envelope, or `None` when it is not for people.
pub fn from_envelope(env: &Envelope, sources: Sources) -> Option<Notification> {
    let base = |container: Option<&ContainerRef>,
                kind: String,
                status,
                severity,
                title: String,
                text: String| Notification {
        fingerprint: fingerprint(&env.host, container, &kind),
        status,
        severity,
        host: env.host.clone(),
        container: container.cloned(),
        kind,
        title,
        text,
        root_cause: None,
        action: None,
        outcome: None,
        confidence: None,
        method: None,
        dry_run: false,
        at: env.timestamp,
        event_id: env.id.clone(),
        event_type: env.event_type().to_owned(),
        page: false,
        one_off: false,
        proposal: None,
    };
    match &env.payload {
        Payload::RemediationComplete(r) => {
            let c = r.container.as_ref();
            let kind = format!(
                "remediation_{}_{}",
                action_word(r.action).replace(' ', "_"),
                format!("{:?}", r.outcome).to_lowercase()
            );
            let severity = match r.outcome {
                Outcome::Success | Outcome::Skipped | Outcome::Superseded => Severity::Info,
                Outcome::Rejected => Severity::Warning,
                Outcome::Failed => Severity::Critical,
            };
            let dry = if r.dry_run { "[dry run] " } else { "" };
            let title = format!(
                "{dry}{} of {} {}",
                capitalise(action_word(r.action)),
                name(c),
                outcome_word(r.outcome)
            );
            let mut n = base(c, kind, Status::Firing, severity, title, r.reason.clone());
            n.action = Some(r.action);
            n.outcome = Some(r.outcome);
            n.dry_run = r.dry_run;
            n.page = r.outcome == Outcome::Failed;
            n.one_off = true;
            Some(n)
        }
        Payload::Escalation(e) => {
            let c = e.container.as_ref();
            let kind = format!("escalation_{}", serde_plain(&e.kind));
            let mut n = base(
                c,
                kind,
                Status::Firing,
                e.severity,
                e.summary.clone(),
                e.detail.clone(),
            );
            // An approval is not a page: nothing is broken by waiting, and the link is the point.
            n.page = e.kind != hemostat_common::events::EscalationKind::ApprovalNeeded;
            n.one_off = true;
            n.proposal = e.proposal.as_ref().map(|p| p.id.clone());
            Some(n)
        }
        Payload::FalseAlarm(f) if sources.false_alarms => {
            let c = f.container.as_ref();
            let mut n = base(
                c,
                "false_alarm".into(),
                Status::Firing,
                Severity::Info,
                format!("No action for {}: {}", name(c), f.root_cause),
                f.reason.clone(),
            );
            n.root_cause = Some(f.root_cause.clone());
            n.confidence = Some(f.confidence);
            n.method = Some(f.analysis_method);
            Some(n)
        }
        Payload::RemediationNeeded(_) | Payload::FalseAlarm(_) | Payload::AlertFolded(_) => None,
        Payload::ContainerUnhealthy(a) if sources.crashes => {
            let crash = matches!(
                a.kind,
                AlertKind::Died | AlertKind::OomKilled | AlertKind::Unhealthy | AlertKind::Oom
            );
            if !crash || (a.kind == AlertKind::Died && a.severity == Severity::Info) {
                return None;
            }
            let c = Some(&a.container);
            let protected = if a.protected {
                " (protected: hemostat will not touch it)"
            } else {
                ""
            };
            let n = base(
                c,
                a.kind.as_str().to_owned(),
                Status::Firing,
                a.severity,
                format!("{}{protected}", capitalise(&a.summary)),
                a.summary.clone(),
            );
            Some(n)
        }
        Payload::ContainerRecovered(a) if sources.crashes => {
            let c = Some(&a.container);
            let mut n = base(
                c,
                a.kind.as_str().to_owned(),
                Status::Resolved,
                Severity::Info,
                capitalise(&a.summary),
                a.summary.clone(),
            );
            // A recovery resolves any page about this container.
            n.page = true;
            Some(n)
        }
        Payload::HostUnhealthy(h) => {
            let kind = serde_plain(&h.kind);
            Some(base(
                None,
                kind,
                Status::Firing,
                h.severity,
                capitalise(&h.summary),
                h.summary.clone(),
            ))
        }
        Payload::HostRecovered(h) => {
            let kind = serde_plain(&h.kind);
            Some(base(
                None,
                kind,
                Status::Resolved,
                Severity::Info,
                capitalise(&h.summary),
                h.summary.clone(),
            ))
        }
        _ => None,
    }
}

/// The snake_case wire name of a serde enum value.
fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".into())
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The kind of a maintenance window's summary.
pub const WINDOW_SUMMARY: &str = "maintenance_summary";

/// Held notifications a summary lists one by one.
const SUMMARY_LIST: usize = 20;

/// The one notification that tells what a maintenance window held: how many, the worst of
/// them, and a line each for the first ones. `None` when it held nothing.
pub fn window_summary(
    member: &str,
    about: &str,
    held: &[Notification],
    count: u64,
    now: DateTime<Utc>,
) -> Option<Notification> {
    if count == 0 {
        return None;
    }
    let severity = held
        .iter()
        .filter(|n| n.status == Status::Firing)
        .map(|n| n.severity)
        .max()
        .unwrap_or(Severity::Info);
    let mut hosts: Vec<&str> = held.iter().map(|n| n.host.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let host = match hosts.as_slice() {
        [one] => (*one).to_owned(),
        _ => "several hosts".to_owned(),
    };
    let mut text = String::new();
    for n in held.iter().take(SUMMARY_LIST) {
        let state = if n.status == Status::Resolved {
            "resolved"
        } else {
            "firing"
        };
        text.push_str(&format!(
            "• {} ({state}, {})\n",
            n.title,
            n.at.format("%H:%M:%S UTC")
        ));
    }
    if count > SUMMARY_LIST.min(held.len()) as u64 {
        text.push_str(&format!(
            "• …and {} more\n",
            count - SUMMARY_LIST.min(held.len()) as u64
        ));
    }
    text.push_str("Problems still present when the window ended are handled now.");
    let kind = WINDOW_SUMMARY.to_owned();
    Some(Notification {
        fingerprint: format!("{host}/-/{kind}/{member}"),
        status: Status::Firing,
        severity,
        host,
        container: None,
        kind,
        title: format!("Maintenance window {about} ended: {count} notification(s) held"),
        text,
        root_cause: None,
        action: None,
        outcome: None,
        confidence: None,
        method: None,
        dry_run: false,
        at: now,
        event_id: format!("maintenance-{member}"),
        event_type: WINDOW_SUMMARY.to_owned(),
        page: false,
        one_off: true,
        proposal: None,
    })
}

/// Adds the analyzer's verdict to a remediation notification (the alert service looks it up by
/// the request id, so the message says why as well as what).
pub fn with_verdict(
    mut n: Notification,
    root_cause: &str,
    confidence: f64,
    method: AnalysisMethod,
) -> Notification {
    n.root_cause = Some(root_cause.to_owned());
    n.confidence = Some(confidence);
    n.method = Some(method);
    n
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::events::{
        ContainerAlert, Detection, Escalation, EscalationKind, RemediationResult,
    };

    fn c(name: &str) -> ContainerRef {
        ContainerRef {
            id: format!("id-{name}"),
            name: name.into(),
            image: "img".into(),
            ..ContainerRef::default()
        }
    }

    fn alert(name: &str, kind: AlertKind) -> ContainerAlert {
        ContainerAlert {
            container: c(name),
            kind,
            severity: Severity::Critical,
            user_initiated: false,
            reminder: false,
            detected_by: Detection::Event,
            summary: format!("container {name} died (exit code 1)"),
            state: None,
            metrics: None,
            breach: None,
            since: None,
            docker_event_time: None,
            protected: false,
            logs: None,
        }
    }

    const ALL: Sources = Sources {
        crashes: true,
        false_alarms: true,
    };

    #[test]
    fn fingerprints_keep_containers_apart() {
        let a = from_envelope(
            &Envelope::new(
                "monitor",
                "h",
                Payload::ContainerUnhealthy(alert("web", AlertKind::Died)),
            ),
            ALL,
        )
        .unwrap();
        let b = from_envelope(
            &Envelope::new(
                "monitor",
                "h",
                Payload::ContainerUnhealthy(alert("db", AlertKind::Died)),
            ),
            ALL,
        )
        .unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint, "h/web/died");
        let r = from_envelope(
            &Envelope::new(
                "monitor",
                "h",
                Payload::ContainerRecovered(alert("web", AlertKind::Died)),
            ),
            ALL,
        )
        .unwrap();
        assert_eq!(
            (r.fingerprint.as_str(), r.status),
            ("h/web/died", Status::Resolved)
        );
    }

    #[test]
    fn sources_can_be_turned_off() {
        let none = Sources {
            crashes: false,
            false_alarms: false,
        };
        let env = Envelope::new(
            "monitor",
            "h",
            Payload::ContainerUnhealthy(alert("web", AlertKind::Died)),
        );
        assert!(from_envelope(&env, none).is_none());
        let mut user = alert("web", AlertKind::Stopped);
        user.user_initiated = true;
        assert!(
            from_envelope(
                &Envelope::new("m", "h", Payload::ContainerUnhealthy(user)),
                ALL
            )
            .is_none()
        );
    }

    #[test]
    fn remediation_and_escalation_shapes() {
        let r = RemediationResult {
            container: Some(c("web")),
            request_id: "r1".into(),
            action: Action::Restart,
            outcome: Outcome::Failed,
            reason: "verification timed out".into(),
            verification: None,
            duration_ms: 10,
            dry_run: true,
            guard: None,
            problem: None,
        };
        let n = from_envelope(
            &Envelope::new("responder", "h", Payload::RemediationComplete(r)),
            ALL,
        )
        .unwrap();
        assert_eq!(n.title, "[dry run] Restart of web failed");
        assert_eq!(n.severity, Severity::Critical);
        assert!(n.page && n.dry_run);
        assert_eq!(n.kind, "remediation_restart_failed");
        let e = Escalation {
            proposal: None,
            kind: EscalationKind::CircuitBreakerOpen,
            severity: Severity::Critical,
            container: Some(c("web")),
            summary: "breaker".into(),
            detail: "d".into(),
        };
        let n = from_envelope(
            &Envelope::new("responder", "h", Payload::Escalation(e)),
            ALL,
        )
        .unwrap();
        assert_eq!(n.kind, "escalation_circuit_breaker_open");
        assert!(n.page);
    }
}
