//! Maintenance windows: periods in which hemostat pauses automatic remediation, notifications,
//! or both, for the containers in a window's scope.
//!
//! Everything here is pure. Windows arrive as values (their stored form is JSON in the
//! [`MAINTENANCE_KEY`] hash), the current time is always passed in, and nothing reads a clock,
//! Redis or Docker. That keeps the daylight-saving arithmetic of recurring windows testable with a
//! simulated clock, and lets every agent share exactly one answer to "is this paused right now?".

use std::collections::BTreeMap;
use std::fmt;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeDelta,
    TimeZone, Timelike, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The Redis hash holding every window: field = window id, value = the [`Window`] as JSON.
pub const MAINTENANCE_KEY: &str = "hemostat:maintenance";

/// The most windows kept in [`MAINTENANCE_KEY`]. Agents read the whole hash before they act or
/// notify, so it has to stay small enough to read on every decision; writers refuse a window past
/// this bound instead of letting a runaway script grow the hash without limit. People schedule a
/// handful of windows by hand, so 200 leaves plenty of room.
pub const MAX_WINDOWS: usize = 200;

/// The longest comment a window may carry, in characters. It is shown in lists and
/// notifications, where a longer text would only be cut off.
pub const MAX_COMMENT_CHARS: usize = 500;

/// The longest container-name glob, in characters. Container names are short, and a bound keeps
/// matching cheap for every event.
pub const MAX_GLOB_CHARS: usize = 256;

/// The longest one-off window, in days. A longer pause is almost always a mistake (a wrong year or
/// month), and an unbounded one would silently disable hemostat for its scope.
pub const MAX_ONCE_DAYS: i64 = 31;

/// The label Docker Compose puts on every container it starts, naming its project.
const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";

/// How many days past today [`Window::next_after`] looks. Seven always reach the next run of a
/// weekly schedule, even when today's own run has already started; the eighth is a margin.
const LOOKAHEAD_DAYS: usize = 8;

/// What a window pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pauses {
    Remediation,
    Notifications,
    Both,
}

/// The one thing a caller asks about: is remediation paused, or are notifications paused?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pausing {
    Remediation,
    Notifications,
}

impl Pauses {
    /// Whether automatic remediation is paused.
    pub fn remediation(self) -> bool {
        matches!(self, Pauses::Remediation | Pauses::Both)
    }

    /// Whether notifications are paused.
    pub fn notifications(self) -> bool {
        matches!(self, Pauses::Notifications | Pauses::Both)
    }

    /// Whether this pauses `what`.
    pub fn covers(self, what: Pausing) -> bool {
        match what {
            Pausing::Remediation => self.remediation(),
            Pausing::Notifications => self.notifications(),
        }
    }

    /// The name used on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Pauses::Remediation => "remediation",
            Pauses::Notifications => "notifications",
            Pauses::Both => "both",
        }
    }

    /// Parses `remediation`, `notifications` or `both` (any case).
    pub fn parse(raw: &str) -> Result<Pauses, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "remediation" => Ok(Pauses::Remediation),
            "notifications" => Ok(Pauses::Notifications),
            "both" => Ok(Pauses::Both),
            _ => Err(format!(
                "unknown pause {:?}: expected remediation, notifications or both",
                raw.trim()
            )),
        }
    }
}

impl fmt::Display for Pauses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which containers a window covers. Every field that is set must match; a scope with no field
/// set covers every container on every host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowScope {
    /// The Docker host id or name, compared exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A container-name glob: `*` matches any run of characters, `?` exactly one, everything else
    /// itself. A leading `/` (as Docker reports names) is ignored on both sides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `key=value` (the label has exactly that value) or `key` (the label is present at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The Compose project, compared exactly with the `com.docker.compose.project` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
}

impl WindowScope {
    /// Whether this scope covers a container (its name and labels) on `host`.
    ///
    /// `container` is `None` for a host-wide matter that concerns no container (the Docker daemon
    /// itself, say). Such a matter is covered only by a scope that sets neither `container`,
    /// `label` nor `compose_project`, because a window narrowed to some containers says nothing
    /// about the host as a whole. The host must still match when the scope sets one.
    pub fn matches(
        &self,
        host: &str,
        container: Option<(&str, &BTreeMap<String, String>)>,
    ) -> bool {
        if self.host.as_deref().is_some_and(|wanted| wanted != host) {
            return false;
        }
        let Some((name, labels)) = container else {
            return self.container.is_none()
                && self.label.is_none()
                && self.compose_project.is_none();
        };
        self.container
            .as_deref()
            .is_none_or(|glob| glob_matches(glob, name))
            && self
                .label
                .as_deref()
                .is_none_or(|selector| label_matches(selector, labels))
            && self.compose_project.as_deref().is_none_or(|project| {
                labels
                    .get(COMPOSE_PROJECT_LABEL)
                    .is_some_and(|value| value == project)
            })
    }

    /// Rejects fields that are set but could never match, so a window does not silently cover
    /// nothing.
    fn validate(&self) -> Result<(), WindowError> {
        if self.host.as_deref() == Some("") {
            return Err(WindowError::new(
                "scope.host",
                "must not be empty; leave it out to cover every host",
            ));
        }
        if let Some(glob) = &self.container {
            if glob.trim_start_matches('/').is_empty() {
                return Err(WindowError::new(
                    "scope.container",
                    "must not be empty; use * for every container or leave it out",
                ));
            }
            let length = glob.chars().count();
            if length > MAX_GLOB_CHARS {
                return Err(WindowError::new(
                    "scope.container",
                    format!("must be at most {MAX_GLOB_CHARS} characters, got {length}"),
                ));
            }
        }
        if let Some(selector) = &self.label {
            let key = selector
                .split_once('=')
                .map_or(selector.as_str(), |(key, _)| key);
            if key.is_empty() {
                return Err(WindowError::new(
                    "scope.label",
                    format!("needs a label key, as key=value or key, got {selector:?}"),
                ));
            }
        }
        if self.compose_project.as_deref() == Some("") {
            return Err(WindowError::new(
                "scope.compose_project",
                "must not be empty; leave it out to cover every project",
            ));
        }
        Ok(())
    }
}

/// When a window holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// One-off: from `start` (inclusive) to `end` (exclusive), in UTC.
    Once {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// Recurring: on each listed weekday (empty = every day), from local time `from` to local time
    /// `to` in time zone `tz` (an IANA name such as "Europe/Berlin"). A `to` at or before `from`
    /// ends on the next day (22:00-02:00). The weekday is that of the start.
    ///
    /// Local times follow the zone's clock changes: a start or end that falls in a gap (clocks set
    /// forward) moves to the first instant after the gap, and one that is ambiguous (clocks set
    /// back) takes the earlier of its two instants. An occurrence left empty by that (02:15-02:45
    /// inside a one-hour gap) does not happen.
    Weekly {
        #[serde(default)]
        days: Vec<Weekday>,
        from: NaiveTime,
        to: NaiveTime,
        tz: String,
    },
}

/// One stretch of time a window holds: from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Occurrence {
    /// A stable id of this occurrence within its window: the start in Unix milliseconds. Callers
    /// use it to remember that they already announced an occurrence; two occurrences of one window
    /// never share a start.
    pub fn key(&self) -> String {
        self.start.timestamp_millis().to_string()
    }
}

/// A maintenance window, as stored in [`MAINTENANCE_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// A ULID, also the field name in the hash.
    pub id: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub scope: WindowScope,
    pub pauses: Pauses,
    pub schedule: Schedule,
    #[serde(default)]
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// Why a window is not acceptable: the field at fault and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct WindowError {
    /// The field as it is named in the JSON form, such as `schedule.tz`.
    pub field: &'static str,
    pub message: String,
}

impl WindowError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        WindowError {
            field,
            message: message.into(),
        }
    }
}

impl Window {
    /// Checks what a writer must check before storing the window: a one-off window ends after it
    /// starts and lasts at most [`MAX_ONCE_DAYS`] days; a weekly one names a known time zone and
    /// has `from` different from `to`; the comment and the container glob stay within their
    /// bounds; and no scope field is set to something that could never match.
    pub fn validate(&self) -> Result<(), WindowError> {
        let comment_length = self.comment.chars().count();
        if comment_length > MAX_COMMENT_CHARS {
            return Err(WindowError::new(
                "comment",
                format!("must be at most {MAX_COMMENT_CHARS} characters, got {comment_length}"),
            ));
        }
        self.scope.validate()?;
        match &self.schedule {
            Schedule::Once { start, end } => {
                if end <= start {
                    return Err(WindowError::new(
                        "schedule.end",
                        format!(
                            "must be after start ({}), got {}",
                            start.to_rfc3339_opts(SecondsFormat::Secs, true),
                            end.to_rfc3339_opts(SecondsFormat::Secs, true)
                        ),
                    ));
                }
                let length = *end - *start;
                if length > TimeDelta::days(MAX_ONCE_DAYS) {
                    return Err(WindowError::new(
                        "schedule.end",
                        format!(
                            "must be at most {MAX_ONCE_DAYS} days after start, got {}",
                            span_text(length)
                        ),
                    ));
                }
            }
            Schedule::Weekly { from, to, tz, .. } => {
                if tz.parse::<Tz>().is_err() {
                    return Err(WindowError::new(
                        "schedule.tz",
                        format!(
                            "unknown time zone {tz:?}: expected an IANA name such as \
                             \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
                        ),
                    ));
                }
                if from == to {
                    return Err(WindowError::new(
                        "schedule.to",
                        format!(
                            "must differ from schedule.from ({}); for a window that ends the \
                             next day give a to before from, such as 22:00-02:00",
                            clock(*from)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The occurrence holding at `now` (`start <= now < end`), if any.
    ///
    /// For a weekly window only occurrences starting on the local day of `now` or the day before
    /// can hold: an occurrence lasts less than a day plus a clock change, so one that starts two
    /// days earlier has ended, and one that starts tomorrow has not begun. A window whose time
    /// zone is unknown never holds; [`Window::validate`] keeps such windows out of the store.
    pub fn active_at(&self, now: DateTime<Utc>) -> Option<Occurrence> {
        match &self.schedule {
            Schedule::Once { start, end } => (*start <= now && now < *end).then_some(Occurrence {
                start: *start,
                end: *end,
            }),
            Schedule::Weekly { days, from, to, tz } => {
                let tz: Tz = tz.parse().ok()?;
                let today = now.with_timezone(&tz).date_naive();
                // Should a pathological schedule make two occurrences overlap, the later end is
                // the one that matters, because callers wait until every pause is over.
                [today.pred_opt(), Some(today)]
                    .into_iter()
                    .flatten()
                    .filter_map(|day| weekly_occurrence(days, *from, *to, tz, day))
                    .filter(|occurrence| occurrence.start <= now && now < occurrence.end)
                    .max_by_key(|occurrence| occurrence.end)
            }
        }
    }

    /// The first occurrence that starts strictly after `now`, looking at most eight days ahead.
    /// `None` for a one-off window that has already started (or ended), and for a weekly window
    /// with an unknown time zone.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<Occurrence> {
        match &self.schedule {
            Schedule::Once { start, end } => {
                (*start > now && *end > *start).then_some(Occurrence {
                    start: *start,
                    end: *end,
                })
            }
            Schedule::Weekly { days, from, to, tz } => {
                let tz: Tz = tz.parse().ok()?;
                let today = now.with_timezone(&tz).date_naive();
                today
                    .iter_days()
                    .take(LOOKAHEAD_DAYS + 1)
                    .filter_map(|day| weekly_occurrence(days, *from, *to, tz, day))
                    .find(|occurrence| occurrence.start > now)
            }
        }
    }

    /// Whether this window can never hold again: a one-off window whose end is at or before
    /// `now`. Readers prune such windows; a weekly window is never finished.
    pub fn finished(&self, now: DateTime<Utc>) -> bool {
        match &self.schedule {
            Schedule::Once { end, .. } => *end <= now,
            Schedule::Weekly { .. } => false,
        }
    }

    /// One line a person reads: "every Mon, Tue 02:00-04:00 Europe/Berlin",
    /// "every day 22:00-02:00 UTC" or "2026-12-07 02:00-04:00 UTC".
    pub fn describe(&self) -> String {
        match &self.schedule {
            Schedule::Once { start, end } => {
                if start.date_naive() == end.date_naive() {
                    format!(
                        "{} {}-{} UTC",
                        start.format("%Y-%m-%d"),
                        clock(start.time()),
                        clock(end.time())
                    )
                } else {
                    format!(
                        "{} {} - {} {} UTC",
                        start.format("%Y-%m-%d"),
                        clock(start.time()),
                        end.format("%Y-%m-%d"),
                        clock(end.time())
                    )
                }
            }
            Schedule::Weekly { days, from, to, tz } => {
                let mut listed = days.clone();
                listed.sort_by_key(|day| day.num_days_from_monday());
                listed.dedup();
                let when = if listed.is_empty() || listed.len() == 7 {
                    "every day".to_owned()
                } else {
                    let names: Vec<String> = listed.iter().map(|day| day.to_string()).collect();
                    format!("every {}", names.join(", "))
                };
                format!("{when} {}-{} {tz}", clock(*from), clock(*to))
            }
        }
    }
}

/// The windows holding at `now` that pause `what` for this container (or, with `container` set
/// to `None`, for a host-wide matter), each with its current occurrence.
///
/// The window whose occurrence ends latest comes first, because a caller waits until every
/// pausing window is over and so needs that end above all; ties go by id, so the order is stable.
pub fn pausing<'a>(
    windows: &'a [Window],
    now: DateTime<Utc>,
    host: &str,
    container: Option<(&str, &BTreeMap<String, String>)>,
    what: Pausing,
) -> Vec<(&'a Window, Occurrence)> {
    let mut holding: Vec<(&Window, Occurrence)> = windows
        .iter()
        .filter(|window| window.pauses.covers(what) && window.scope.matches(host, container))
        .filter_map(|window| window.active_at(now).map(|occurrence| (window, occurrence)))
        .collect();
    holding.sort_by(|(a, a_occurrence), (b, b_occurrence)| {
        b_occurrence
            .end
            .cmp(&a_occurrence.end)
            .then_with(|| a.id.cmp(&b.id))
    });
    holding
}

/// Parses the shorthand for weekday lists used by the command line and the API: `mon,tue,fri`,
/// ranges such as `mon-fri` (also wrapping, `fri-mon`), `weekdays`, `weekends`, and `daily`,
/// `every day` or an empty text for every day (returned as an empty list). Case does not matter
/// and full names work too. The result is in calendar order, Monday first, without repeats.
pub fn parse_days(raw: &str) -> Result<Vec<Weekday>, String> {
    let text = raw.trim().to_ascii_lowercase();
    if matches!(text.as_str(), "" | "daily" | "every day" | "everyday") {
        return Ok(Vec::new());
    }
    let mut days = Vec::new();
    for part in text.split(',').map(str::trim) {
        match part {
            "weekdays" => days.extend([
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ]),
            "weekends" | "weekend" => days.extend([Weekday::Sat, Weekday::Sun]),
            _ => match part.split_once('-') {
                Some((first, last)) => {
                    let last = parse_day(last.trim())?;
                    let mut day = parse_day(first.trim())?;
                    days.push(day);
                    while day != last {
                        day = day.succ();
                        days.push(day);
                    }
                }
                None => days.push(parse_day(part)?),
            },
        }
    }
    days.sort_by_key(|day| day.num_days_from_monday());
    days.dedup();
    Ok(days)
}

/// Parses a local time of day, `HH:MM` or `HH:MM:SS` (a one-digit hour is fine).
pub fn parse_local_time(raw: &str) -> Result<NaiveTime, String> {
    let text = raw.trim();
    let invalid = || {
        format!("invalid time of day {text:?}: expected HH:MM or HH:MM:SS from 00:00 to 23:59:59")
    };
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(invalid());
    }
    let mut numbers = [0_u32; 3];
    for (index, part) in parts.iter().enumerate() {
        let width_ok = if index == 0 {
            (1..=2).contains(&part.len())
        } else {
            part.len() == 2
        };
        if !width_ok || !part.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        numbers[index] = part.parse().map_err(|_| invalid())?;
    }
    NaiveTime::from_hms_opt(numbers[0], numbers[1], numbers[2]).ok_or_else(invalid)
}

/// One day name, short or full, already lower-case.
fn parse_day(name: &str) -> Result<Weekday, String> {
    let day = match name {
        "mon" | "monday" => Weekday::Mon,
        "tue" | "tues" | "tuesday" => Weekday::Tue,
        "wed" | "wednesday" => Weekday::Wed,
        "thu" | "thur" | "thurs" | "thursday" => Weekday::Thu,
        "fri" | "friday" => Weekday::Fri,
        "sat" | "saturday" => Weekday::Sat,
        "sun" | "sunday" => Weekday::Sun,
        _ => {
            return Err(format!(
                "unknown day {name:?}: expected day names (mon or monday through sun or sunday), \
                 ranges such as mon-fri, lists such as mon,wed,fri, weekdays, weekends or daily"
            ));
        }
    };
    Ok(day)
}

/// The occurrence of a weekly schedule that starts on local `day`, if the schedule runs that day
/// and the clock changes leave it any time at all.
fn weekly_occurrence(
    days: &[Weekday],
    from: NaiveTime,
    to: NaiveTime,
    tz: Tz,
    day: NaiveDate,
) -> Option<Occurrence> {
    if !days.is_empty() && !days.contains(&day.weekday()) {
        return None;
    }
    let start = resolve_local(tz, day.and_time(from))?;
    let end_day = if to <= from { day.succ_opt()? } else { day };
    let end = resolve_local(tz, end_day.and_time(to))?;
    (end > start).then_some(Occurrence { start, end })
}

/// The instant a local wall-clock time stands for in `tz`: the earlier instant when the clock was
/// set back and the time happened twice, the first instant after the gap when the clock was set
/// forward and the time never happened.
fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(instant) => Some(instant.with_timezone(&Utc)),
        LocalResult::Ambiguous(earlier, _) => Some(earlier.with_timezone(&Utc)),
        LocalResult::None => end_of_gap(tz, local),
    }
}

/// The first instant whose local time in `tz` is at or after `local`, for a `local` inside a gap.
///
/// That instant is the clock change itself. chrono does not report it, so it is found by bisection
/// over whole seconds (zones change their offset on whole seconds). UTC offsets lie within about
/// fourteen hours of zero, so `local` read as UTC, minus and plus 26 hours, brackets the change
/// safely; no zone changes its clock twice within that span, so local time only grows across it.
fn end_of_gap(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let reached = |seconds: i64| {
        DateTime::from_timestamp(seconds, 0)
            .is_some_and(|instant| instant.with_timezone(&tz).naive_local() >= local)
    };
    let middle = local.and_utc().timestamp();
    let margin = TimeDelta::hours(26).num_seconds();
    let (mut before, mut after) = (middle - margin, middle + margin);
    if reached(before) || !reached(after) {
        return None;
    }
    while after - before > 1 {
        let probe = before + (after - before) / 2;
        if reached(probe) {
            after = probe;
        } else {
            before = probe;
        }
    }
    DateTime::from_timestamp(after, 0)
}

/// Whether a container name matches a glob where `*` is any run of characters (also none), `?`
/// exactly one character, and everything else only itself. Docker reports names with a leading
/// `/`, people type them without, so one leading `/` is dropped from both sides.
fn glob_matches(glob: &str, name: &str) -> bool {
    let pattern: Vec<char> = glob.strip_prefix('/').unwrap_or(glob).chars().collect();
    let text: Vec<char> = name.strip_prefix('/').unwrap_or(name).chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was and how much text it has swallowed so far: on a mismatch the star
    // takes one more character and matching resumes after it. Only the last star ever needs to
    // be revisited, which keeps this linear in practice and free of recursion.
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                last_star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match last_star {
                Some((star, swallowed)) => {
                    last_star = Some((star, swallowed + 1));
                    p = star + 1;
                    t = swallowed + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Whether `labels` satisfy a `key=value` or bare `key` selector.
fn label_matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    match selector.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|actual| actual == value),
        None => labels.contains_key(selector),
    }
}

/// A time of day as people write it: `02:00`, or `02:00:30` when the seconds matter.
fn clock(time: NaiveTime) -> String {
    if time.second() == 0 {
        time.format("%H:%M").to_string()
    } else {
        time.format("%H:%M:%S").to_string()
    }
}

/// A length of time in the largest whole unit that states it exactly.
fn span_text(length: TimeDelta) -> String {
    let seconds = length.num_seconds();
    if seconds % 86_400 == 0 {
        format!("{} days", seconds / 86_400)
    } else if seconds % 3_600 == 0 {
        format!("{} hours", seconds / 3_600)
    } else {
        format!("{} minutes", seconds / 60)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Every case in this module goes through here, so a failure names its case.
    #[track_caller]
    fn check<T: PartialEq + fmt::Debug>(case: &str, got: T, want: T) {
        assert_eq!(got, want, "case: {case}");
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// A UTC instant in 2026 written as "MM-DD HH:MM", so table rows stay on one line.
    fn at(text: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(&format!("2026-{text}"), "%Y-%m-%d %H:%M");
        naive.unwrap().and_utc()
    }

    /// An occurrence as "MM-DDTHH:MM..MM-DDTHH:MM" in UTC, or "-" for none.
    fn span(occurrence: Option<Occurrence>) -> String {
        let text = |t: DateTime<Utc>| t.format("%m-%dT%H:%M").to_string();
        occurrence.map_or_else(
            || "-".to_owned(),
            |o| format!("{}..{}", text(o.start), text(o.end)),
        )
    }

    fn window(pauses: Pauses, scope: WindowScope, schedule: Schedule) -> Window {
        Window {
            id: "01KBW6Y7ZJ3Q5T8N0M2R4V6X8A".to_owned(),
            comment: String::new(),
            scope,
            pauses,
            schedule,
            created_by: "ops".to_owned(),
            created_at: utc("2026-01-01T00:00:00Z"),
        }
    }

    fn once(start: &str, end: &str) -> Window {
        let schedule = Schedule::Once {
            start: utc(start),
            end: utc(end),
        };
        window(Pauses::Both, WindowScope::default(), schedule)
    }

    fn weekly(days: &str, from: &str, to: &str, tz: &str) -> Window {
        let schedule = Schedule::Weekly {
            days: parse_days(days).unwrap(),
            from: parse_local_time(from).unwrap(),
            to: parse_local_time(to).unwrap(),
            tz: tz.to_owned(),
        };
        window(Pauses::Both, WindowScope::default(), schedule)
    }

    /// A scope from "field=value" words, such as "host=h1 label=tier=db"; "" is the empty scope.
    fn scope(spec: &str) -> WindowScope {
        let mut scope = WindowScope::default();
        for word in spec.split_whitespace() {
            let (field, value) = word.split_once('=').unwrap();
            let value = Some(value.to_owned());
            match field {
                "host" => scope.host = value,
                "container" => scope.container = value,
                "label" => scope.label = value,
                "project" => scope.compose_project = value,
                _ => panic!("unknown scope field {field}"),
            }
        }
        scope
    }

    #[test]
    fn glob_matching() {
        let cases = [
            ("db*", "db", true),
            ("db*", "db-primary", true),
            ("db*", "xdb", false),
            ("*-worker-?", "shop-worker-1", true),
            ("*-worker-?", "shop-worker-12", false),
            ("*-worker-?", "shop-worker-", false),
            ("*-worker-?", "-worker-a", true),
            ("web.1", "web.1", true),
            ("web.1", "webx1", false),
            ("[ab]", "a", false),
            ("[ab]", "[ab]", true),
            ("db*", "/db1", true),
            ("/db*", "db1", true),
            ("/db*", "/db1", true),
            ("*", "", true),
            ("*", "/", true),
            ("", "", true),
            ("db", "", false),
            ("?", "", false),
            ("a*b*c", "axxbyybc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "anything", true),
            ("redis", "redis", true),
            ("redis", "redis-1", false),
            ("Redis", "redis", false),
            ("caf?", "café", true),
        ];
        for (glob, name, want) in cases {
            check(
                &format!("{glob:?} against {name:?}"),
                glob_matches(glob, name),
                want,
            );
        }
    }

    #[test]
    fn scope_matching() {
        let labels: BTreeMap<String, String> = [
            ("com.docker.compose.project", "shop"),
            ("tier", "db"),
            ("blank", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // (scope, host, whether a container is asked about or a host-wide matter, matches)
        let cases = [
            ("", "h1", true, true),
            ("", "h1", false, true),
            ("host=h1", "h1", true, true),
            ("host=h1", "h2", true, false),
            ("host=h1", "h1", false, true),
            ("host=h1", "h2", false, false),
            ("label=tier=db", "h1", true, true),
            ("label=tier=web", "h1", true, false),
            ("label=tier", "h1", true, true),
            ("label=owner", "h1", true, false),
            ("label=blank=", "h1", true, true),
            ("label=blank", "h1", true, true),
            ("label=tier=", "h1", true, false),
            ("project=shop", "h1", true, true),
            ("project=Shop", "h1", true, false),
            ("project=blog", "h1", true, false),
            ("container=shop-db-*", "h1", true, true),
            ("container=web*", "h1", true, false),
            (
                "host=h1 container=*db* label=tier=db project=shop",
                "h1",
                true,
                true,
            ),
            (
                "host=h1 container=*db* label=tier=web project=shop",
                "h1",
                true,
                false,
            ),
            ("host=h2 container=*db*", "h1", true, false),
            ("container=*", "h1", false, false),
            ("label=tier", "h1", false, false),
            ("project=shop", "h1", false, false),
        ];
        for (spec, host, with_container, want) in cases {
            let container = with_container.then_some(("/shop-db-1", &labels));
            let case = format!("{spec:?} on {host}, container: {with_container}");
            check(&case, scope(spec).matches(host, container), want);
        }
    }

    #[test]
    fn once_holds_from_start_to_end_exclusive() {
        let w = once("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z");
        let backwards = once("2026-12-07T04:00:00Z", "2026-12-07T02:00:00Z");
        let held = "12-07T02:00..12-07T04:00";
        let cases = [
            (&w, "12-07 01:59", "-"),
            (&w, "12-07 02:00", held),
            (&w, "12-07 03:00", held),
            (&w, "12-07 03:59", held),
            (&w, "12-07 04:00", "-"),
            (&w, "12-08 00:00", "-"),
            (&backwards, "12-07 03:00", "-"),
        ];
        for (w, now, want) in cases {
            let case = format!("{} at {now}", w.describe());
            check(&case, span(w.active_at(at(now))), want.to_owned());
        }
    }

    /// A clock that only moves when the test moves it.
    struct FakeClock {
        now: DateTime<Utc>,
    }

    impl FakeClock {
        fn tick(&mut self) {
            self.now += TimeDelta::minutes(1);
        }
    }

    /// Steps a paused clock one minute at a time for `days` days from `start` and returns whether
    /// the window held at the beginning and each moment it opened or closed, as local wall-clock
    /// time with the zone's abbreviation. On the way it checks that every opening was announced
    /// by `next_after` a minute before, and that every closing is the end `active_at` reported.
    fn simulate(w: &Window, start: &str, days: i64) -> (bool, Vec<String>) {
        let Schedule::Weekly { tz, .. } = &w.schedule else {
            panic!("simulate takes weekly windows");
        };
        let tz: Tz = tz.parse().unwrap();
        let mut clock = FakeClock { now: at(start) };
        let stop = clock.now + TimeDelta::days(days);
        let mut current = w.active_at(clock.now);
        let initially = current.is_some();
        let mut announced = w.next_after(clock.now);
        let mut transitions = Vec::new();
        while clock.now < stop {
            clock.tick();
            let now = clock.now;
            let local = now.with_timezone(&tz).format("%a %m-%d %H:%M %Z");
            let holding = w.active_at(now);
            match (current, holding) {
                (None, Some(opened)) => {
                    assert_eq!(opened.start, now, "opened late at {local}");
                    assert_eq!(announced, Some(opened), "next_after missed {local}");
                    transitions.push(format!("open {local}"));
                }
                (Some(closed), None) => {
                    assert_eq!(closed.end, now, "closed off its end at {local}");
                    transitions.push(format!("close {local}"));
                }
                (Some(before), Some(after)) => assert_eq!(before, after, "jumped at {local}"),
                (None, None) => {}
            }
            current = holding;
            announced = w.next_after(now);
        }
        (initially, transitions)
    }

    fn lines(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|text| (*text).to_owned()).collect()
    }

    #[test]
    fn weekly_overnight_across_spring_forward_in_new_york() {
        let w = weekly("mon-fri", "22:00", "02:00", "America/New_York");
        // From Thursday 2026-03-05 at noon EST; clocks go forward on Sunday 03-08 at 02:00, so
        // the same wall-clock times are an hour earlier in UTC from Monday on.
        let want = lines(&[
            "open Thu 03-05 22:00 EST",
            "close Fri 03-06 02:00 EST",
            "open Fri 03-06 22:00 EST",
            "close Sat 03-07 02:00 EST",
            "open Mon 03-09 22:00 EDT",
            "close Tue 03-10 02:00 EDT",
            "open Tue 03-10 22:00 EDT",
            "close Wed 03-11 02:00 EDT",
            "open Wed 03-11 22:00 EDT",
            "close Thu 03-12 02:00 EDT",
            "open Thu 03-12 22:00 EDT",
            "close Fri 03-13 02:00 EDT",
        ]);
        check("eight days", simulate(&w, "03-05 17:00", 8), (false, want));
        let cases = [
            (
                "friday start, saturday 01:30 EST",
                "03-07 06:30",
                "03-07T03:00..03-07T07:00",
            ),
            ("saturday 23:00 EST", "03-08 04:00", "-"),
            ("sunday 23:00 EDT", "03-09 03:00", "-"),
            (
                "monday 23:00 EDT",
                "03-10 03:00",
                "03-10T02:00..03-10T06:00",
            ),
        ];
        for (case, now, want) in cases {
            check(case, span(w.active_at(at(now))), want.to_owned());
        }
    }

    #[test]
    fn weekly_overnight_across_fall_back_in_new_york() {
        let w = weekly("mon-fri", "22:00", "02:00", "America/New_York");
        // From Thursday 2026-10-29 at noon EDT; clocks go back on Sunday 11-01 at 02:00.
        let want = lines(&[
            "open Thu 10-29 22:00 EDT",
            "close Fri 10-30 02:00 EDT",
            "open Fri 10-30 22:00 EDT",
            "close Sat 10-31 02:00 EDT",
            "open Mon 11-02 22:00 EST",
            "close Tue 11-03 02:00 EST",
            "open Tue 11-03 22:00 EST",
            "close Wed 11-04 02:00 EST",
            "open Wed 11-04 22:00 EST",
            "close Thu 11-05 02:00 EST",
            "open Thu 11-05 22:00 EST",
            "close Fri 11-06 02:00 EST",
        ]);
        check("eight days", simulate(&w, "10-29 16:00", 8), (false, want));
        let cases = [
            (
                "friday start, saturday 01:59 EDT",
                "10-31 05:59",
                "10-31T02:00..10-31T06:00",
            ),
            ("saturday 23:00 EDT", "11-01 03:00", "-"),
            ("sunday 23:00 EST", "11-02 04:00", "-"),
            (
                "monday 23:00 EST",
                "11-03 04:00",
                "11-03T03:00..11-03T07:00",
            ),
        ];
        for (case, now, want) in cases {
            check(case, span(w.active_at(at(now))), want.to_owned());
        }
    }

    #[test]
    fn weekly_on_the_clock_change_days_in_new_york() {
        let ny = |days, from, to| weekly(days, from, to, "America/New_York");
        // Each simulation runs two days from Saturday noon before the change.
        let cases = [
            (
                "01:00-03:00 lasts one hour on the spring-forward day",
                ny("daily", "01:00", "03:00"),
                "03-07 17:00",
                lines(&[
                    "open Sun 03-08 01:00 EST",
                    "close Sun 03-08 03:00 EDT",
                    "open Mon 03-09 01:00 EDT",
                    "close Mon 03-09 03:00 EDT",
                ]),
            ),
            (
                "a start in the gap (02:30) moves to 03:00",
                ny("daily", "02:30", "04:00"),
                "03-07 17:00",
                lines(&[
                    "open Sun 03-08 03:00 EDT",
                    "close Sun 03-08 04:00 EDT",
                    "open Mon 03-09 02:30 EDT",
                    "close Mon 03-09 04:00 EDT",
                ]),
            ),
            (
                "an end in the gap (02:30) moves to 03:00",
                ny("sun", "01:00", "02:30"),
                "03-07 17:00",
                lines(&["open Sun 03-08 01:00 EST", "close Sun 03-08 03:00 EDT"]),
            ),
            (
                "a window wholly inside the gap does not happen",
                ny("sun", "02:10", "02:50"),
                "03-07 17:00",
                lines(&[]),
            ),
            (
                "01:00-03:00 lasts three hours on the fall-back day",
                ny("daily", "01:00", "03:00"),
                "10-31 16:00",
                lines(&[
                    "open Sun 11-01 01:00 EDT",
                    "close Sun 11-01 03:00 EST",
                    "open Mon 11-02 01:00 EST",
                    "close Mon 11-02 03:00 EST",
                ]),
            ),
            (
                "an ambiguous start (01:30) is the first one; the second does not reopen",
                ny("daily", "01:30", "01:45"),
                "10-31 16:00",
                lines(&[
                    "open Sun 11-01 01:30 EDT",
                    "close Sun 11-01 01:45 EDT",
                    "open Mon 11-02 01:30 EST",
                    "close Mon 11-02 01:45 EST",
                ]),
            ),
        ];
        for (case, w, start, want) in cases {
            check(case, simulate(&w, start, 2), (false, want));
        }
    }

    #[test]
    fn weekly_point_cases() {
        let gap = weekly("sun", "02:30", "04:00", "America/New_York");
        let ambiguous = weekly("sun", "01:30", "03:00", "America/New_York");
        let berlin = weekly("mon-fri", "02:00", "04:00", "Europe/Berlin");
        let berlin_gap = weekly("daily", "02:15", "03:30", "Europe/Berlin");
        let berlin_ambiguous = weekly("daily", "02:30", "03:15", "Europe/Berlin");
        let overnight = weekly("daily", "23:00", "01:00", "UTC");
        let sunday_night = weekly("sun", "23:00", "01:00", "UTC");
        let to_midnight = weekly("daily", "22:00", "00:00", "UTC");
        let mars = weekly("daily", "01:00", "02:00", "Mars/Olympus");
        let cases = [
            // New York, spring forward on 03-08: 02:30 does not exist, so the start is 03:00 EDT.
            (&gap, "03-08 06:59", "-"),
            (&gap, "03-08 07:00", "03-08T07:00..03-08T08:00"),
            (&ambiguous, "03-08 06:45", "03-08T06:30..03-08T07:00"),
            // New York, fall back on 11-01: 01:30 happens twice; the window starts at the first.
            (&ambiguous, "11-01 05:29", "-"),
            (&ambiguous, "11-01 05:30", "11-01T05:30..11-01T08:00"),
            (&ambiguous, "11-01 06:30", "11-01T05:30..11-01T08:00"),
            // Berlin is UTC+1 in winter and UTC+2 in summer.
            (&berlin, "01-05 00:59", "-"),
            (&berlin, "01-05 01:00", "01-05T01:00..01-05T03:00"),
            (&berlin, "07-06 00:30", "07-06T00:00..07-06T02:00"),
            (&berlin, "01-10 01:30", "-"),
            // Berlin springs forward on 03-29 (02:15 moves to 03:00 CEST) and falls back on 10-25.
            (&berlin_gap, "03-29 00:59", "-"),
            (&berlin_gap, "03-29 01:00", "03-29T01:00..03-29T01:30"),
            (&berlin_ambiguous, "10-25 00:30", "10-25T00:30..10-25T02:15"),
            (&berlin_ambiguous, "10-25 01:30", "10-25T00:30..10-25T02:15"),
            // UTC overnight windows; 05-31 is a Sunday.
            (&overnight, "06-01 00:30", "05-31T23:00..06-01T01:00"),
            (&overnight, "06-01 01:00", "-"),
            (&overnight, "06-01 23:00", "06-01T23:00..06-02T01:00"),
            (&sunday_night, "06-01 00:30", "05-31T23:00..06-01T01:00"),
            (&sunday_night, "05-31 00:30", "-"),
            (&to_midnight, "06-01 23:59", "06-01T22:00..06-02T00:00"),
            (&to_midnight, "06-02 00:00", "-"),
            // A zone nobody knows never holds.
            (&mars, "06-01 01:30", "-"),
        ];
        for (w, now, want) in cases {
            let case = format!("{} at {now}", w.describe());
            check(&case, span(w.active_at(at(now))), want.to_owned());
        }
    }

    #[test]
    fn next_after_cases() {
        let one = once("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z");
        let ny = weekly("mon-fri", "22:00", "02:00", "America/New_York");
        let sundays = weekly("sun", "03:00", "04:00", "UTC");
        let mars = weekly("daily", "01:00", "02:00", "Mars/Olympus");
        let cases = [
            (&one, "12-06 00:00", "12-07T02:00..12-07T04:00"),
            (&one, "12-07 02:00", "-"),
            (&one, "12-07 03:00", "-"),
            (&one, "12-08 00:00", "-"),
            // Thursday 23:00 EST (inside Thursday's occurrence): next is Friday 22:00 EST.
            (&ny, "03-06 04:00", "03-07T03:00..03-07T07:00"),
            (&ny, "03-07 02:59", "03-07T03:00..03-07T07:00"),
            // At Friday 22:00 itself the next one is strictly later: Monday 22:00, now EDT.
            (&ny, "03-07 03:00", "03-10T02:00..03-10T06:00"),
            (&ny, "03-07 04:00", "03-10T02:00..03-10T06:00"),
            // From a Monday, six days ahead.
            (&sundays, "06-01 12:00", "06-07T03:00..06-07T04:00"),
            (&mars, "06-01 00:00", "-"),
        ];
        for (w, now, want) in cases {
            let case = format!("{} after {now}", w.describe());
            check(&case, span(w.next_after(at(now))), want.to_owned());
        }
    }

    #[test]
    fn finished_cases() {
        let one = once("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z");
        let daily = weekly("daily", "01:00", "02:00", "UTC");
        let cases = [
            (&one, "12-07 01:00", false),
            (&one, "12-07 03:59", false),
            (&one, "12-07 04:00", true),
            (&one, "12-31 00:00", true),
            (&daily, "12-31 00:00", false),
        ];
        for (w, now, want) in cases {
            check(
                &format!("{} at {now}", w.describe()),
                w.finished(at(now)),
                want,
            );
        }
    }

    #[test]
    fn pausing_picks_matching_active_windows_latest_end_first() {
        let labels: BTreeMap<String, String> = [("tier".to_owned(), "db".to_owned())].into();
        let make = |id: &str, pauses, spec, end| {
            let schedule = Schedule::Once {
                start: at("12-07 02:00"),
                end: at(end),
            };
            Window {
                id: id.to_owned(),
                ..window(pauses, scope(spec), schedule)
            }
        };
        let windows = [
            make("a", Pauses::Remediation, "container=db*", "12-07 04:00"),
            make("b", Pauses::Both, "", "12-07 06:00"),
            make("c", Pauses::Notifications, "label=tier=db", "12-07 05:00"),
            make("d", Pauses::Both, "host=h2", "12-07 09:00"),
            make("e", Pauses::Both, "", "12-07 03:00"),
            make("f", Pauses::Both, "project=shop", "12-07 09:00"),
            make("g", Pauses::Remediation, "host=h1", "12-07 04:00"),
        ];
        let db = Some(("/db-1", &labels));
        use Pausing::{Notifications, Remediation};
        // (now, host, container, what, the pausing windows with their ends)
        let cases = [
            (
                "12-07 03:00",
                "h1",
                db,
                Remediation,
                "b 06:00, a 04:00, g 04:00",
            ),
            ("12-07 03:00", "h1", db, Notifications, "b 06:00, c 05:00"),
            ("12-07 03:00", "h1", None, Remediation, "b 06:00, g 04:00"),
            ("12-07 03:00", "h2", None, Remediation, "d 09:00, b 06:00"),
            ("12-07 05:30", "h1", db, Notifications, "b 06:00"),
            ("12-07 10:00", "h1", db, Remediation, ""),
        ];
        for (now, host, container, what, want) in cases {
            let found = pausing(&windows, at(now), host, container, what);
            let got: Vec<String> = found
                .iter()
                .map(|(w, o)| format!("{} {}", w.id, o.end.format("%H:%M")))
                .collect();
            let case = format!(
                "{what:?} on {host} at {now}, container: {}",
                container.is_some()
            );
            check(&case, got.join(", "), want.to_owned());
        }
    }

    #[test]
    fn validate_cases() {
        let in_scope = |spec| Window {
            scope: scope(spec),
            ..once("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z")
        };
        let with_comment = |comment: String| Window {
            comment,
            ..once("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z")
        };
        let long_glob = format!("container={}", "a".repeat(257));
        // (case, window, the field at fault or "" when valid)
        let cases = [
            (
                "weekly",
                weekly("mon-fri", "22:00", "02:00", "America/New_York"),
                "",
            ),
            (
                "31 days",
                once("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
                "",
            ),
            ("500 chars", with_comment("é".repeat(500)), ""),
            (
                "256-char glob",
                in_scope(&format!("container={}", "a".repeat(256))),
                "",
            ),
            (
                "bad tz",
                weekly("daily", "01:00", "02:00", "Mars/Olympus"),
                "schedule.tz",
            ),
            (
                "from = to",
                weekly("daily", "01:00", "01:00", "UTC"),
                "schedule.to",
            ),
            (
                "end = start",
                once("2026-12-07T02:00:00Z", "2026-12-07T02:00:00Z"),
                "schedule.end",
            ),
            (
                "end < start",
                once("2026-12-07T02:00:00Z", "2026-12-07T01:00:00Z"),
                "schedule.end",
            ),
            (
                "40 days",
                once("2026-12-01T00:00:00Z", "2027-01-10T00:00:00Z"),
                "schedule.end",
            ),
            ("501 chars", with_comment("x".repeat(501)), "comment"),
            ("257-char glob", in_scope(&long_glob), "scope.container"),
            ("empty glob", in_scope("container=/"), "scope.container"),
            ("no label key", in_scope("label==db"), "scope.label"),
            ("empty host", in_scope("host="), "scope.host"),
            (
                "empty project",
                in_scope("project="),
                "scope.compose_project",
            ),
        ];
        for (case, w, want) in cases {
            check(case, w.validate().err().map_or("", |e| e.field), want);
        }

        let message = |w: Window| w.validate().unwrap_err().to_string();
        check(
            "bad tz message",
            message(weekly("daily", "01:00", "02:00", "Mars/Olympus")),
            "invalid schedule.tz: unknown time zone \"Mars/Olympus\": expected an IANA name \
             such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
                .to_owned(),
        );
        check(
            "end before start message",
            message(once("2026-12-07T02:00:00Z", "2026-12-07T01:00:00Z")),
            "invalid schedule.end: must be after start (2026-12-07T02:00:00Z), \
             got 2026-12-07T01:00:00Z"
                .to_owned(),
        );
        check(
            "40 days message",
            message(once("2026-12-01T00:00:00Z", "2027-01-10T00:00:00Z")),
            "invalid schedule.end: must be at most 31 days after start, got 40 days".to_owned(),
        );
        check(
            "from = to message",
            message(weekly("daily", "01:00", "01:00", "UTC")),
            "invalid schedule.to: must differ from schedule.from (01:00); for a window that \
             ends the next day give a to before from, such as 22:00-02:00"
                .to_owned(),
        );
        check(
            "comment message",
            message(with_comment("x".repeat(501))),
            "invalid comment: must be at most 500 characters, got 501".to_owned(),
        );
    }

    #[test]
    fn serde_shape_is_stable() {
        let w = Window {
            comment: "kernel patching".to_owned(),
            pauses: Pauses::Remediation,
            scope: scope("host=prod-1 project=shop"),
            ..weekly("mon,tue", "02:00", "04:30", "Europe/Berlin")
        };
        let json = serde_json::to_string(&w).unwrap();
        let want = concat!(
            r#"{"id":"01KBW6Y7ZJ3Q5T8N0M2R4V6X8A","comment":"kernel patching","#,
            r#""scope":{"host":"prod-1","compose_project":"shop"},"pauses":"remediation","#,
            r#""schedule":{"kind":"weekly","days":["Mon","Tue"],"from":"02:00:00","#,
            r#""to":"04:30:00","tz":"Europe/Berlin"},"#,
            r#""created_by":"ops","created_at":"2026-01-01T00:00:00Z"}"#,
        );
        check("weekly json", json.as_str(), want);
        check(
            "weekly round trip",
            serde_json::from_str::<Window>(&json).unwrap(),
            w,
        );

        let one = once("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z").schedule;
        let json = serde_json::to_string(&one).unwrap();
        let want = r#"{"kind":"once","start":"2026-12-07T02:00:00Z","end":"2026-12-07T04:00:00Z"}"#;
        check("once json", json.as_str(), want);
        check(
            "once round trip",
            serde_json::from_str::<Schedule>(&json).unwrap(),
            one,
        );

        let minimal = concat!(
            r#"{"id":"w","pauses":"both","created_at":"2026-01-01T00:00:00Z","#,
            r#""schedule":{"kind":"weekly","from":"22:00:00","to":"02:00:00","tz":"UTC"}}"#,
        );
        let parsed: Window = serde_json::from_str(minimal).unwrap();
        check("default comment", parsed.comment.as_str(), "");
        check("default created_by", parsed.created_by.as_str(), "");
        check(
            "default days",
            parsed.describe(),
            "every day 22:00-02:00 UTC".to_owned(),
        );
        check("default scope", parsed.scope, WindowScope::default());
        let unknown = serde_json::from_str::<Pauses>(r#""sometimes""#);
        check("unknown pause", unknown.is_err(), true);
    }

    #[test]
    fn describe_cases() {
        let cases = [
            (
                weekly("tue,mon", "02:00", "04:00", "Europe/Berlin"),
                "every Mon, Tue 02:00-04:00 Europe/Berlin",
            ),
            (
                weekly("daily", "22:00", "02:00", "America/New_York"),
                "every day 22:00-02:00 America/New_York",
            ),
            (
                weekly("mon-sun", "22:00", "02:00", "UTC"),
                "every day 22:00-02:00 UTC",
            ),
            (
                weekly("sun", "01:30:15", "02:00", "UTC"),
                "every Sun 01:30:15-02:00 UTC",
            ),
            (
                once("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z"),
                "2026-12-07 02:00-04:00 UTC",
            ),
            (
                once("2026-12-07T22:00:00Z", "2026-12-08T02:00:00Z"),
                "2026-12-07 22:00 - 2026-12-08 02:00 UTC",
            ),
        ];
        for (w, want) in cases {
            check(want, w.describe(), want.to_owned());
        }
    }

    #[test]
    fn occurrence_key_is_start_in_unix_millis() {
        let w = once("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z");
        let occurrence = w.active_at(at("12-07 03:00")).unwrap();
        check("key", occurrence.key(), "1796608800000".to_owned());
    }

    #[test]
    fn pauses_cases() {
        let parsed = [
            ("remediation", Ok(Pauses::Remediation)),
            (" Notifications ", Ok(Pauses::Notifications)),
            ("BOTH", Ok(Pauses::Both)),
            (
                "all",
                Err("unknown pause \"all\": expected remediation, notifications or both"),
            ),
        ];
        for (raw, want) in parsed {
            check(raw, Pauses::parse(raw), want.map_err(str::to_owned));
        }
        // (pauses, pauses remediation, pauses notifications, its name)
        let flags = [
            (Pauses::Remediation, true, false, "remediation"),
            (Pauses::Notifications, false, true, "notifications"),
            (Pauses::Both, true, true, "both"),
        ];
        for (pauses, remediation, notifications, name) in flags {
            check(name, pauses.remediation(), remediation);
            check(name, pauses.notifications(), notifications);
            check(name, pauses.covers(Pausing::Remediation), remediation);
            check(name, pauses.covers(Pausing::Notifications), notifications);
            check(name, pauses.to_string(), name.to_owned());
        }
    }

    #[test]
    fn parse_days_cases() {
        use Weekday::{Fri, Mon, Sat, Sun, Thu, Tue, Wed};
        // (input, the days, or the part that is not understood)
        let cases: [(&str, Result<&[Weekday], &str>); 19] = [
            ("mon,tue,fri", Ok(&[Mon, Tue, Fri])),
            ("mon-fri", Ok(&[Mon, Tue, Wed, Thu, Fri])),
            ("Mon-Fri", Ok(&[Mon, Tue, Wed, Thu, Fri])),
            ("fri-mon", Ok(&[Mon, Fri, Sat, Sun])),
            ("thu - sat", Ok(&[Thu, Fri, Sat])),
            ("weekdays", Ok(&[Mon, Tue, Wed, Thu, Fri])),
            ("weekends", Ok(&[Sat, Sun])),
            ("WEEKENDS,mon", Ok(&[Mon, Sat, Sun])),
            ("Monday, wednesday , SUNDAY", Ok(&[Mon, Wed, Sun])),
            ("tue,mon,tue", Ok(&[Mon, Tue])),
            ("daily", Ok(&[])),
            ("Every Day", Ok(&[])),
            ("", Ok(&[])),
            ("  ", Ok(&[])),
            ("funday", Err("funday")),
            ("mon-", Err("")),
            ("mon,,tue", Err("")),
            ("mon,daily", Err("daily")),
            ("monx", Err("monx")),
        ];
        for (raw, want) in cases {
            let want = want.map(<[Weekday]>::to_vec).map_err(|bad| {
                format!(
                    "unknown day {bad:?}: expected day names (mon or monday through sun or \
                     sunday), ranges such as mon-fri, lists such as mon,wed,fri, weekdays, \
                     weekends or daily"
                )
            });
            check(raw, parse_days(raw), want);
        }
    }

    #[test]
    fn parse_local_time_cases() {
        // (input, the time as (hour, minute, second), or None when invalid)
        let cases = [
            ("02:00", Some((2, 0, 0))),
            ("23:59:59", Some((23, 59, 59))),
            ("00:00", Some((0, 0, 0))),
            (" 7:05 ", Some((7, 5, 0))),
            ("24:00", None),
            ("12:60", None),
            ("12:00:60", None),
            ("12", None),
            ("12:5", None),
            ("noon", None),
            ("12:00:00:00", None),
            ("+1:00", None),
            ("", None),
        ];
        for (raw, want) in cases {
            let want = want
                .map(|(h, m, s)| NaiveTime::from_hms_opt(h, m, s).unwrap())
                .ok_or_else(|| {
                    format!(
                        "invalid time of day {:?}: expected HH:MM or HH:MM:SS from 00:00 to \
                         23:59:59",
                        raw.trim()
                    )
                });
            check(raw, parse_local_time(raw), want);
        }
    }
}
