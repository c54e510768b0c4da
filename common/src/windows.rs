//! Maintenance windows in Redis: what a person (the CLI, the dashboard, the HTTP API) asks
//! for ([`WindowSpec`]), turned into a validated [`Window`] and stored in
//! [`MAINTENANCE_KEY`] with an audit entry; read by the responder (which holds remediation)
//! and the alert service (which holds notifications and sends a summary when a window ends).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::bus::Bus;
use crate::config::parse_duration;
use crate::events::AUDIT_STREAM;
use crate::maintenance::{
    MAINTENANCE_KEY, MAX_WINDOWS, Pauses, Schedule, Window, WindowScope, parse_days,
    parse_local_time,
};

/// A window as a person asks for one: either `for` (from now, or from `start`), or `start` and
/// `end`, or a weekly schedule (`days`, `from`, `to`, `tz`). The same fields on the command
/// line (`--for 2h --container 'db*'`) and in the HTTP API's JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct WindowSpec {
    /// How long a one-off window lasts, from `start` or from now (e.g. 30m, 2h).
    #[arg(long = "for")]
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
    /// When a one-off window starts (RFC 3339, e.g. 2026-12-07T02:00:00Z); default now.
    #[arg(long)]
    #[serde(default)]
    pub start: Option<DateTime<Utc>>,
    /// When a one-off window ends (RFC 3339).
    #[arg(long)]
    #[serde(default)]
    pub end: Option<DateTime<Utc>>,
    /// A weekly window's days: mon,tue / mon-fri / weekdays / weekends / daily.
    #[arg(long)]
    #[serde(default)]
    pub days: Option<String>,
    /// A weekly window's local start time (HH:MM).
    #[arg(long)]
    #[serde(default)]
    pub from: Option<String>,
    /// A weekly window's local end time (HH:MM; earlier than `from`: the next day).
    #[arg(long)]
    #[serde(default)]
    pub to: Option<String>,
    /// A weekly window's time zone (IANA, e.g. Europe/Berlin); default UTC.
    #[arg(long)]
    #[serde(default)]
    pub tz: Option<String>,
    /// Only this Docker host.
    #[arg(long)]
    #[serde(default)]
    pub host: Option<String>,
    /// Only containers whose name matches this glob (`*`, `?`).
    #[arg(long)]
    #[serde(default)]
    pub container: Option<String>,
    /// Only containers with this label (`key=value`, or `key` for any value).
    #[arg(long)]
    #[serde(default)]
    pub label: Option<String>,
    /// Only containers of this Compose project.
    #[arg(long)]
    #[serde(default)]
    pub project: Option<String>,
    /// What it pauses: remediation, notifications or both.
    #[arg(long, default_value = "both")]
    #[serde(default = "both")]
    pub pauses: String,
    /// Why (shown in reports, messages and the summary).
    #[arg(long, default_value = "")]
    #[serde(default)]
    pub comment: String,
}

fn both() -> String {
    "both".into()
}

impl WindowSpec {
    /// The window this asks for, made by `by` at `now`, validated; the error says which field
    /// and what would be valid.
    pub fn into_window(self, now: DateTime<Utc>, by: &str) -> Result<Window, String> {
        let weekly = self.days.is_some() || self.from.is_some() || self.to.is_some();
        let once = self.duration.is_some() || self.end.is_some();
        let schedule = match (weekly, once) {
            (true, true) => {
                return Err(
                    "a window is either one-off (for/start/end) or weekly (days/from/to/tz), not both"
                        .into(),
                );
            }
            (false, false) => {
                return Err(
                    "say how long (for=2h), until when (end=...), or when it recurs (days, from, to)"
                        .into(),
                );
            }
            (true, false) => {
                let from = parse_local_time(self.from.as_deref().unwrap_or(""))
                    .map_err(|e| format!("from: {e}"))?;
                let to = parse_local_time(self.to.as_deref().unwrap_or(""))
                    .map_err(|e| format!("to: {e}"))?;
                Schedule::Weekly {
                    days: parse_days(self.days.as_deref().unwrap_or(""))
                        .map_err(|e| format!("days: {e}"))?,
                    from,
                    to,
                    tz: self.tz.clone().unwrap_or_else(|| "UTC".into()),
                }
            }
            (false, true) => {
                let start = self.start.unwrap_or(now);
                let end = match (self.end, self.duration.as_deref()) {
                    (Some(end), None) => end,
                    (None, Some(d)) => {
                        let d: Duration = parse_duration(d).map_err(|e| format!("for: {e}"))?;
                        start
                            + chrono::Duration::from_std(d)
                                .map_err(|_| "for: too long".to_owned())?
                    }
                    _ => return Err("give for or end, not both".into()),
                };
                Schedule::Once { start, end }
            }
        };
        let w = Window {
            id: ulid::Ulid::new().to_string().to_lowercase(),
            comment: self.comment.trim().to_owned(),
            scope: WindowScope {
                host: self.host.filter(|s| !s.is_empty()),
                container: self.container.filter(|s| !s.is_empty()),
                label: self.label.filter(|s| !s.is_empty()),
                compose_project: self.project.filter(|s| !s.is_empty()),
            },
            pauses: Pauses::parse(&self.pauses).map_err(|e| format!("pauses: {e}"))?,
            schedule,
            created_by: by.chars().take(64).collect(),
            created_at: now,
        };
        w.validate().map_err(|e| e.to_string())?;
        Ok(w)
    }
}

/// The windows stored, unreadable ones skipped; windows that can never hold again are
/// removed on the way (with an audit entry).
pub async fn load(bus: &Bus) -> anyhow::Result<Vec<Window>> {
    let mut conn = bus.connection();
    let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(MAINTENANCE_KEY)
        .query_async(&mut conn)
        .await?;
    let now = Utc::now();
    let mut out = Vec::new();
    for (id, raw) in all {
        match serde_json::from_str::<Window>(&raw) {
            Ok(w) if w.finished(now) => {
                // Best effort: a reader without the right to delete leaves it to one with it.
                let _: redis::RedisResult<()> = redis::cmd("HDEL")
                    .arg(MAINTENANCE_KEY)
                    .arg(&id)
                    .query_async(&mut conn)
                    .await;
            }
            Ok(w) => out.push(w),
            Err(e) => {
                tracing::warn!(window = %id, error = %e, "unreadable maintenance window ignored")
            }
        }
    }
    out.sort_by_key(|w| w.created_at);
    Ok(out)
}

/// Stores `w` and audits it; refused when [`MAX_WINDOWS`] are stored already.
pub async fn add(bus: &Bus, w: &Window) -> anyhow::Result<()> {
    let mut conn = bus.connection();
    let n: usize = redis::cmd("HLEN")
        .arg(MAINTENANCE_KEY)
        .query_async(&mut conn)
        .await?;
    if n >= MAX_WINDOWS {
        anyhow::bail!(
            "{n} maintenance windows are stored already; at most {MAX_WINDOWS}: end some first"
        );
    }
    let json = serde_json::to_string(w)?;
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(MAINTENANCE_KEY)
        .arg(&w.id)
        .arg(&json)
        .ignore()
        .cmd("XADD")
        .arg(AUDIT_STREAM)
        .arg("*")
        .arg("event_type")
        .arg("maintenance_added")
        .arg("by")
        .arg(&w.created_by)
        .arg("window")
        .arg(&json)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Ends window `id` now and audits it; whether it existed. What it held is summarised at once.
pub async fn end(bus: &Bus, id: &str, by: &str) -> anyhow::Result<bool> {
    let mut conn = bus.connection();
    let (removed,): (u32,) = redis::pipe()
        .atomic()
        .cmd("HDEL")
        .arg(MAINTENANCE_KEY)
        .arg(id)
        .cmd("XADD")
        .arg(AUDIT_STREAM)
        .arg("*")
        .arg("event_type")
        .arg("maintenance_ended")
        .arg("by")
        .arg(by)
        .arg("window_id")
        .arg(id)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(removed == 1)
}

/// One line per window for a person: id, what it pauses, when, for whom, and whether it
/// holds now.
pub fn describe(w: &Window, now: DateTime<Utc>) -> String {
    let mut scope = Vec::new();
    if let Some(h) = &w.scope.host {
        scope.push(format!("host {h}"));
    }
    if let Some(c) = &w.scope.container {
        scope.push(format!("containers {c}"));
    }
    if let Some(l) = &w.scope.label {
        scope.push(format!("label {l}"));
    }
    if let Some(p) = &w.scope.compose_project {
        scope.push(format!("project {p}"));
    }
    let scope = if scope.is_empty() {
        "everything".to_owned()
    } else {
        scope.join(", ")
    };
    let state = match w.active_at(now) {
        Some(o) => format!("HOLDS NOW until {}", o.end.format("%Y-%m-%d %H:%M UTC")),
        None => match w.next_after(now) {
            Some(o) => format!("next {}", o.start.format("%Y-%m-%d %H:%M UTC")),
            None => "over".to_owned(),
        },
    };
    format!(
        "{}  pauses {}  {}  for {}  [{}]{}",
        w.id,
        w.pauses,
        w.describe(),
        scope,
        state,
        if w.comment.is_empty() {
            String::new()
        } else {
            format!("  {}", w.comment)
        }
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_spec_becomes_a_window_or_says_what_is_wrong() {
        let once = WindowSpec {
            duration: Some("2h".into()),
            container: Some("db*".into()),
            pauses: "remediation".into(),
            ..WindowSpec::default()
        }
        .into_window(now(), "cli")
        .unwrap();
        assert_eq!(
            once.schedule,
            Schedule::Once {
                start: now(),
                end: now() + chrono::Duration::hours(2)
            }
        );
        assert_eq!(once.pauses, Pauses::Remediation);
        assert_eq!(once.scope.container.as_deref(), Some("db*"));
        let weekly = WindowSpec {
            days: Some("mon-fri".into()),
            from: Some("02:00".into()),
            to: Some("04:00".into()),
            tz: Some("Europe/Berlin".into()),
            pauses: "both".into(),
            ..WindowSpec::default()
        }
        .into_window(now(), "api")
        .unwrap();
        assert!(
            matches!(weekly.schedule, Schedule::Weekly { ref tz, .. } if tz == "Europe/Berlin")
        );
        let bad: &[(WindowSpec, &str)] = &[
            (
                WindowSpec {
                    pauses: "both".into(),
                    ..WindowSpec::default()
                },
                "say how long",
            ),
            (
                WindowSpec {
                    duration: Some("soon".into()),
                    pauses: "both".into(),
                    ..WindowSpec::default()
                },
                "for:",
            ),
            (
                WindowSpec {
                    duration: Some("1h".into()),
                    days: Some("mon".into()),
                    pauses: "both".into(),
                    ..WindowSpec::default()
                },
                "not both",
            ),
            (
                WindowSpec {
                    duration: Some("1h".into()),
                    pauses: "everything".into(),
                    ..WindowSpec::default()
                },
                "pauses:",
            ),
            (
                WindowSpec {
                    days: Some("mon".into()),
                    from: Some("25:00".into()),
                    to: Some("04:00".into()),
                    pauses: "both".into(),
                    ..WindowSpec::default()
                },
                "from:",
            ),
            (
                WindowSpec {
                    days: Some("mon".into()),
                    from: Some("01:00".into()),
                    to: Some("04:00".into()),
                    tz: Some("Mars/Olympus".into()),
                    pauses: "both".into(),
                    ..WindowSpec::default()
                },
                "tz",
            ),
        ];
        for (spec, want) in bad {
            let e = spec.clone().into_window(now(), "x").unwrap_err();
            assert!(e.contains(want), "{spec:?}: {e}");
        }
    }
}
