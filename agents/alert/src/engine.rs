//! When to tell people, learned from Alertmanager: fold duplicates, wait `group_wait` so a burst
//! becomes one grouped message, repeat a still-firing problem only after `repeat_interval`, send
//! a resolved message on recovery, and mute what a silence matches.
//!
//! Pure and clocked by the caller (ms since the epoch): the state it decides on is kept in
//! Redis by the caller, so a killed agent's successor decides exactly as it would have.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::notify::{Notification, Status};

/// Timing settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// How long the first notification of a batch waits for others to join it.
    pub group_wait: Duration,
    /// How soon a still-firing problem may be told again.
    pub repeat_interval: Duration,
}

/// What happened to one notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Waiting in the current batch.
    Queued,
    /// A duplicate of something already told (or a recovery of something never told).
    Folded(String),
    /// Muted by a silence.
    Silenced(String),
}

/// A batch ready to send: one message, naming every notification in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub notifications: Vec<Notification>,
}

/// What is remembered about one fingerprint (`host/container/kind`) between notifications:
/// kept in Redis (`hemostat:alert:fp:<fingerprint>`), so every replica and every successor of
/// a killed agent folds and repeats the same way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpState {
    /// A problem was told and has not been resolved since.
    pub firing: bool,
    /// When it was last told (ms since the epoch): the repeat interval counts from here.
    pub told_ms: Option<u64>,
    /// Notifications folded into it since it was last told.
    pub folded: u32,
}

/// A silence: mutes notifications whose host, container and kind match, until it expires.
/// Empty fields match anything; a trailing `*` matches a prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

fn field_matches(pattern: &Option<String>, value: &str) -> bool {
    match pattern.as_deref() {
        None | Some("") | Some("*") => true,
        Some(p) => match p.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => p == value,
        },
    }
}

impl Silence {
    pub fn matches(&self, n: &Notification, now: DateTime<Utc>) -> bool {
        now < self.expires_at
            && field_matches(&self.host, &n.host)
            && field_matches(
                &self.container,
                n.container.as_ref().map(|c| c.name.as_str()).unwrap_or(""),
            )
            && field_matches(&self.kind, &n.kind)
    }
}

/// Decides what happens to notification `n` at `now_ms`, given its fingerprint's state and
/// what the group being gathered holds. Returns the decision and the fingerprint's new state
/// (unchanged for events and silenced notifications).
pub fn decide(
    cfg: &EngineConfig,
    state: FpState,
    group: &[Notification],
    n: &Notification,
    now_ms: u64,
    wall: DateTime<Utc>,
    silences: &[Silence],
) -> (Decision, FpState) {
    if let Some(s) = silences.iter().find(|s| s.matches(n, wall)) {
        return (Decision::Silenced(s.id.clone()), state);
    }
    if n.one_off {
        // An event is told every time; only the very same event twice is folded.
        if group.iter().any(|p| p.event_id == n.event_id) {
            return (
                Decision::Folded("the same event is already in the batch".into()),
                state,
            );
        }
        return (Decision::Queued, state);
    }
    let mut next = state;
    match n.status {
        Status::Firing => {
            if state.firing
                && state.told_ms.is_some_and(|t| {
                    now_ms.saturating_sub(t) < cfg.repeat_interval.as_millis() as u64
                })
            {
                next.folded += 1;
                return (
                    Decision::Folded(format!(
                        "already told within the repeat interval ({} folded)",
                        next.folded
                    )),
                    next,
                );
            }
            if group
                .iter()
                .any(|p| p.fingerprint == n.fingerprint && p.status == Status::Firing)
            {
                next.folded += 1;
                return (
                    Decision::Folded("already in the batch being grouped".into()),
                    next,
                );
            }
            next.firing = true;
            next.folded = 0;
        }
        Status::Resolved => {
            if !state.firing {
                return (Decision::Folded("nothing firing to resolve".into()), state);
            }
            next.firing = false;
            // A problem that fired and cleared inside one group_wait is still told, with its
            // resolution next to it, so it never silently disappears.
        }
    }
    (Decision::Queued, next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::events::{ContainerRef, Severity};

    fn n(container: &str, kind: &str, status: Status) -> Notification {
        Notification {
            fingerprint: format!("h/{container}/{kind}"),
            status,
            severity: Severity::Critical,
            host: "h".into(),
            container: Some(ContainerRef {
                name: container.into(),
                ..ContainerRef::default()
            }),
            kind: kind.into(),
            title: format!("{container} {kind}"),
            text: String::new(),
            root_cause: None,
            action: None,
            outcome: None,
            confidence: None,
            method: None,
            dry_run: false,
            at: Utc::now(),
            event_id: format!("e-{container}-{kind}-{status:?}"),
            event_type: "container_unhealthy".into(),
            page: false,
            one_off: false,
            proposal: None,
        }
    }

    fn cfg() -> EngineConfig {
        EngineConfig {
            group_wait: Duration::from_secs(5),
            repeat_interval: Duration::from_secs(3600),
        }
    }

    const S: u64 = 1000;

    fn d(
        state: FpState,
        group: &[Notification],
        n: &Notification,
        now: u64,
    ) -> (Decision, FpState) {
        decide(&cfg(), state, group, n, now, Utc::now(), &[])
    }

    fn told(at: u64) -> FpState {
        FpState {
            firing: true,
            told_ms: Some(at),
            folded: 0,
        }
    }

    #[test]
    fn a_burst_is_one_group_that_names_every_container() {
        let web = n("web", "died", Status::Firing);
        let db = n("db", "died", Status::Firing);
        assert_eq!(d(FpState::default(), &[], &web, 0).0, Decision::Queued);
        // Another container's problem joins the group; it hides nothing.
        assert_eq!(
            d(FpState::default(), std::slice::from_ref(&web), &db, S).0,
            Decision::Queued
        );
    }

    #[test]
    fn duplicates_fold_and_repeat_only_after_the_interval() {
        let web = n("web", "died", Status::Firing);
        let (first, state) = d(FpState::default(), &[], &web, 0);
        assert_eq!(first, Decision::Queued);
        assert!(state.firing);
        // The same problem again while it is being grouped.
        let (again, state) = d(state, std::slice::from_ref(&web), &web, S);
        assert!(matches!(again, Decision::Folded(_)), "{again:?}");
        assert_eq!(state.folded, 1);
        // Told at 5 s; ten minutes later it is still firing: folded.
        let state = FpState {
            told_ms: Some(5 * S),
            ..state
        };
        assert!(matches!(
            d(state, &[], &web, 600 * S).0,
            Decision::Folded(_)
        ));
        // After the repeat interval it is told again.
        assert_eq!(d(state, &[], &web, 3606 * S).0, Decision::Queued);
    }

    #[test]
    fn events_are_told_every_time() {
        for i in 0..3 {
            let mut r = n("web", "remediation_restart_success", Status::Firing);
            r.one_off = true;
            r.event_id = format!("e{i}");
            let (dec, state) = d(told(0), &[], &r, S);
            assert_eq!(dec, Decision::Queued, "restart {i} is told");
            assert_eq!(state, told(0), "events never change a fingerprint");
        }
        let mut r = n("web", "remediation_restart_success", Status::Firing);
        r.one_off = true;
        assert!(matches!(
            d(FpState::default(), &[r.clone()], &r, S).0,
            Decision::Folded(_)
        ));
    }

    #[test]
    fn recovery_sends_a_resolved_message_once() {
        let resolved = n("web", "died", Status::Resolved);
        let (dec, state) = d(told(0), &[], &resolved, 10 * S);
        assert_eq!(dec, Decision::Queued);
        assert!(!state.firing);
        assert!(matches!(
            d(state, &[], &resolved, 11 * S).0,
            Decision::Folded(_)
        ));
        // After resolution, a new failure is news again at once.
        let fire = n("web", "died", Status::Firing);
        assert_eq!(d(state, &[], &fire, 12 * S).0, Decision::Queued);
        // A recovery of something never told is folded.
        assert!(matches!(
            d(FpState::default(), &[], &resolved, S).0,
            Decision::Folded(_)
        ));
    }

    #[test]
    fn a_silence_mutes_exactly_what_it_matches_until_it_expires() {
        let now = Utc::now();
        let s = Silence {
            id: "s1".into(),
            host: None,
            container: Some("web*".into()),
            kind: Some("died".into()),
            expires_at: now + chrono::Duration::minutes(10),
            comment: "deploying".into(),
            created_by: "test".into(),
            created_at: now,
        };
        let silences = [s];
        let cases = [
            (n("web-1", "died", Status::Firing), now, true),
            (n("web-1", "oom_killed", Status::Firing), now, false),
            (n("db", "died", Status::Firing), now, false),
            (
                n("web-2", "died", Status::Firing),
                now + chrono::Duration::minutes(11),
                false,
            ),
        ];
        for (notification, at, muted) in cases {
            let (dec, _) = decide(
                &cfg(),
                FpState::default(),
                &[],
                &notification,
                0,
                at,
                &silences,
            );
            assert_eq!(
                matches!(dec, Decision::Silenced(_)),
                muted,
                "{} at {at}",
                notification.fingerprint
            );
        }
    }
}
