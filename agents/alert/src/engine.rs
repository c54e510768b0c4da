//! When to tell people, learned from Alertmanager: fold duplicates, wait `group_wait` so a burst
//! becomes one grouped message, repeat a still-firing problem only after `repeat_interval`, send
//! a resolved message on recovery, and mute what a silence matches.
//!
//! Pure and clocked by the caller (`tokio::time::Instant`), so the timing is tested under a
//! paused Tokio clock.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

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
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub notifications: Vec<Notification>,
}

#[derive(Debug, Default, Clone)]
struct State {
    firing: bool,
    last_told: Option<Instant>,
    folded: u32,
}

/// The per-process state.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    states: HashMap<String, State>,
    pending: Vec<Notification>,
    batch_started: Option<Instant>,
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

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            states: HashMap::new(),
            pending: Vec::new(),
            batch_started: None,
        }
    }

    /// Takes one notification in at `now`.
    pub fn ingest(
        &mut self,
        n: Notification,
        now: Instant,
        wall: DateTime<Utc>,
        silences: &[Silence],
    ) -> Decision {
        if let Some(s) = silences.iter().find(|s| s.matches(&n, wall)) {
            return Decision::Silenced(s.id.clone());
        }
        if n.one_off {
            // An event is told every time; only the very same event twice is folded.
            if self.pending.iter().any(|p| p.event_id == n.event_id) {
                return Decision::Folded("the same event is already in the batch".into());
            }
            if self.pending.is_empty() {
                self.batch_started = Some(now);
            }
            self.pending.push(n);
            return Decision::Queued;
        }
        let state = self.states.entry(n.fingerprint.clone()).or_default();
        match n.status {
            Status::Firing => {
                if state.firing
                    && state
                        .last_told
                        .is_some_and(|t| now.duration_since(t) < self.cfg.repeat_interval)
                {
                    state.folded += 1;
                    return Decision::Folded(format!(
                        "already told within the repeat interval ({} folded)",
                        state.folded
                    ));
                }
                if self
                    .pending
                    .iter()
                    .any(|p| p.fingerprint == n.fingerprint && p.status == Status::Firing)
                {
                    state.folded += 1;
                    return Decision::Folded("already in the batch being grouped".into());
                }
                state.firing = true;
                state.folded = 0;
            }
            Status::Resolved => {
                if !state.firing {
                    return Decision::Folded("nothing firing to resolve".into());
                }
                state.firing = false;
                // A problem that fired and cleared inside one group_wait is still told, with
                // its resolution next to it, so it never silently disappears.
            }
        }
        if self.pending.is_empty() {
            self.batch_started = Some(now);
        }
        self.pending.push(n);
        Decision::Queued
    }

    /// When the current batch is due, if there is one.
    pub fn due(&self) -> Option<Instant> {
        self.batch_started.map(|t| t + self.cfg.group_wait)
    }

    /// Hands over the batch if it is due at `now`.
    pub fn flush(&mut self, now: Instant) -> Option<Batch> {
        let due = self.due()?;
        if now < due {
            return None;
        }
        self.batch_started = None;
        let notifications = std::mem::take(&mut self.pending);
        for n in &notifications {
            if let Some(s) = self.states.get_mut(&n.fingerprint) {
                s.last_told = Some(now);
            }
        }
        // Forget resolved fingerprints so memory stays bounded by what is firing.
        self.states.retain(|_, s| {
            s.firing
                || s.last_told
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(86_400))
        });
        (!notifications.is_empty()).then_some(Batch { notifications })
    }

    /// Fingerprints currently firing.
    pub fn firing(&self) -> usize {
        self.states.values().filter(|s| s.firing).count()
    }
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
            event_id: "e".into(),
            event_type: "container_unhealthy".into(),
            page: false,
            one_off: false,
        }
    }

    fn cfg() -> EngineConfig {
        EngineConfig {
            group_wait: Duration::from_secs(5),
            repeat_interval: Duration::from_secs(3600),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_becomes_one_grouped_message_naming_every_container() {
        let mut e = Engine::new(cfg());
        let t0 = Instant::now();
        assert_eq!(
            e.ingest(n("web", "died", Status::Firing), t0, Utc::now(), &[]),
            Decision::Queued
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            e.ingest(
                n("db", "died", Status::Firing),
                Instant::now(),
                Utc::now(),
                &[]
            ),
            Decision::Queued
        );
        assert!(e.flush(Instant::now()).is_none(), "group_wait not over");
        tokio::time::advance(Duration::from_secs(4)).await;
        let batch = e.flush(Instant::now()).expect("due after group_wait");
        let names: Vec<_> = batch
            .notifications
            .iter()
            .map(|n| n.container.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(
            names,
            ["web", "db"],
            "two containers, both named, neither hidden"
        );
        assert!(e.due().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_fold_and_repeat_only_after_the_interval() {
        let mut e = Engine::new(cfg());
        e.ingest(
            n("web", "died", Status::Firing),
            Instant::now(),
            Utc::now(),
            &[],
        );
        assert!(matches!(
            e.ingest(
                n("web", "died", Status::Firing),
                Instant::now(),
                Utc::now(),
                &[]
            ),
            Decision::Folded(_)
        ));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(e.flush(Instant::now()).unwrap().notifications.len(), 1);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(matches!(
            e.ingest(
                n("web", "died", Status::Firing),
                Instant::now(),
                Utc::now(),
                &[]
            ),
            Decision::Folded(_)
        ));
        tokio::time::advance(Duration::from_secs(3000)).await;
        assert_eq!(
            e.ingest(
                n("web", "died", Status::Firing),
                Instant::now(),
                Utc::now(),
                &[]
            ),
            Decision::Queued,
            "repeat_interval passed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_told_every_time() {
        let mut e = Engine::new(cfg());
        for i in 0..3 {
            let mut r = n("web", "remediation_restart_success", Status::Firing);
            r.one_off = true;
            r.event_id = format!("e{i}");
            assert_eq!(
                e.ingest(r, Instant::now(), Utc::now(), &[]),
                Decision::Queued
            );
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(
                e.flush(Instant::now()).unwrap().notifications.len(),
                1,
                "restart {i} is told"
            );
        }
        assert_eq!(e.firing(), 0, "events never fire");
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_sends_a_resolved_message_once() {
        let mut e = Engine::new(cfg());
        e.ingest(
            n("web", "died", Status::Firing),
            Instant::now(),
            Utc::now(),
            &[],
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        e.flush(Instant::now()).unwrap();
        assert_eq!(e.firing(), 1);
        assert_eq!(
            e.ingest(
                n("web", "died", Status::Resolved),
                Instant::now(),
                Utc::now(),
                &[]
            ),
            Decision::Queued
        );
        assert!(matches!(
            e.ingest(
                n("web", "died", Status::Resolved),
                Instant::now(),
                Utc::now(),
                &[]
            ),
            Decision::Folded(_)
        ));
        tokio::time::advance(Duration::from_secs(5)).await;
        let b = e.flush(Instant::now()).unwrap();
        assert_eq!(b.notifications[0].status, Status::Resolved);
        assert_eq!(e.firing(), 0);
        // After resolution, a new failure is news again at once.
        assert_eq!(
            e.ingest(
                n("web", "died", Status::Firing),
                Instant::now(),
                Utc::now(),
                &[]
            ),
            Decision::Queued
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silence_mutes_exactly_what_it_matches_until_it_expires() {
        let mut e = Engine::new(cfg());
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
            let label = notification.fingerprint.clone();
            let d = e.ingest(notification, Instant::now(), at, &silences);
            assert_eq!(matches!(d, Decision::Silenced(_)), muted, "{label} at {at}");
        }
    }
}
