//! What the monitor reports at start-up about containers that died while no monitor was
//! watching (a redeploy, a crash of the monitor): pure decisions over facts the glue in
//! `lib.rs` gathered once (inspect, the `health_alert` stream, Docker's event history).
//!
//! The rules, in order:
//! - a clean exit (code 0) is not a death;
//! - a death older than `HEMOSTAT_STARTUP_LOOKBACK` is history, never resurrected;
//! - a death the stream already holds (same container, `since` within 2 s) is not reported
//!   again, but is tracked, so a later `start` still closes it;
//! - a person's `docker stop` is never a death: if the stream or Docker's event history shows a
//!   `stop` after the container's last `start`, nothing is reported; and when Docker's history
//!   (only its newest 256 events) no longer reaches back to the exit, an exit is not reported
//!   either, because nobody can tell. An OOM kill is reported then, since a person cannot
//!   cause one.

use std::collections::HashMap;
use std::time::Duration;

use hemostat_common::events::{AlertKind, Envelope, Payload};

use crate::detect::Class;

/// Two reports of one death are at most this far apart (ns): the event-time alert carries the
/// `die` event's time, a start-up report the container's `State.FinishedAt`.
pub const SAME_DEATH_NANOS: i64 = 2_000_000_000;

/// How many of the newest `health_alert` entries are read once at start-up.
pub const HISTORY_ENTRIES: usize = 5_000;

/// One container alert in the stream, reduced to what start-up needs.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    class: Class,
    kind: AlertKind,
    /// `since` and `docker_event_time`, in ns.
    times: [Option<i64>; 2],
}

/// What the `health_alert` stream already holds about this host's containers.
#[derive(Debug, Default)]
pub struct Reported {
    /// Per container id, newest first.
    by_container: HashMap<String, Vec<Entry>>,
}

impl Reported {
    /// From the stream's envelopes, newest first (as [`hemostat_common::bus::Bus::recent`]
    /// returns them); other hosts' envelopes are left out.
    pub fn from_envelopes<'a>(
        newest_first: impl IntoIterator<Item = &'a Envelope>,
        host: &str,
    ) -> Reported {
        let mut r = Reported::default();
        for env in newest_first.into_iter().filter(|e| e.host == host) {
            let (class, a) = match &env.payload {
                Payload::ContainerUnhealthy(a) => (Class::Problem, a),
                Payload::ContainerUserAction(a) => (Class::UserAction, a),
                Payload::ContainerRecovered(a) => (Class::Recovered, a),
                _ => continue,
            };
            let ns =
                |t: Option<chrono::DateTime<chrono::Utc>>| t.and_then(|t| t.timestamp_nanos_opt());
            r.by_container
                .entry(a.container.id.clone())
                .or_default()
                .push(Entry {
                    class,
                    kind: a.kind,
                    times: [ns(a.since), ns(a.docker_event_time)],
                });
        }
        r
    }

    fn near(&self, id: &str, class: Class, kinds: &[AlertKind], at_nano: i64) -> bool {
        self.by_container.get(id).is_some_and(|entries| {
            entries.iter().any(|e| {
                e.class == class
                    && kinds.contains(&e.kind)
                    && e.times
                        .iter()
                        .flatten()
                        .any(|t| t.abs_diff(at_nano) <= SAME_DEATH_NANOS as u64)
            })
        })
    }

    /// Whether a death of `id` at `at_nano` was reported already.
    pub fn death_near(&self, id: &str, at_nano: i64) -> bool {
        self.near(
            id,
            Class::Problem,
            &[AlertKind::Died, AlertKind::OomKilled],
            at_nano,
        )
    }

    /// Whether the monitor saw a person stop `id` at `at_nano`.
    pub fn stop_near(&self, id: &str, at_nano: i64) -> bool {
        self.near(id, Class::UserAction, &[AlertKind::Stopped], at_nano)
    }

    /// `Some(since)` when the newest health-check alert about `id` is a problem that no
    /// recovery has closed yet.
    pub fn open_unhealthy(&self, id: &str) -> Option<Option<i64>> {
        let newest = self
            .by_container
            .get(id)?
            .iter()
            .find(|e| e.kind == AlertKind::Unhealthy && e.class != Class::UserAction)?;
        (newest.class == Class::Problem).then_some(newest.times[0])
    }
}

/// A container that was not running at start-up, from inspect.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Exit {
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// `State.FinishedAt`, in ns.
    pub finished_at_nano: Option<i64>,
}

impl Exit {
    /// What this death would be reported as.
    fn kind(&self) -> AlertKind {
        if self.oom_killed {
            AlertKind::OomKilled
        } else {
            AlertKind::Died
        }
    }
}

/// What Docker's event history says about how a container's last run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHistory {
    /// A `stop` came after the last `start`: `docker stop`, `docker compose stop`, or the
    /// responder's own `stop`.
    PersonStopped,
    /// The history reaches back to the exit and holds no `stop` after the last `start`.
    NoStop,
    /// Docker no longer holds the events around the exit (or could not be asked).
    CannotTell,
}

/// A snapshot of Docker's event history (it keeps only its newest 256 events), reduced to
/// what start-up needs.
#[derive(Debug, Default)]
pub struct EventHistory {
    /// The time of the oldest event Docker still holds, of any kind.
    oldest_nano: Option<i64>,
    /// Per container id, its `start` and `stop` actions, oldest first.
    start_stop: HashMap<String, Vec<String>>,
}

impl EventHistory {
    /// From the oldest event's time and the container events `(id, action)`, oldest first.
    pub fn new(
        oldest_nano: Option<i64>,
        container_events: impl IntoIterator<Item = (String, String)>,
    ) -> EventHistory {
        let mut start_stop: HashMap<String, Vec<String>> = HashMap::new();
        for (id, action) in container_events {
            if action == "start" || action == "stop" {
                start_stop.entry(id).or_default().push(action);
            }
        }
        EventHistory {
            oldest_nano,
            start_stop,
        }
    }

    /// How the run of `id` that ended at `finished_at_nano` ended.
    pub fn stop_history(&self, id: &str, finished_at_nano: i64) -> StopHistory {
        // The last of `start` and `stop` decides: a `stop` after the latest `start` is a
        // person's stop (a crash, an OOM kill and `docker kill` have none). History is kept in
        // order, so if that `start` has been dropped, so has everything before it.
        let last = self.start_stop.get(id).and_then(|a| a.last());
        if last.is_some_and(|a| a == "stop") {
            return StopHistory::PersonStopped;
        }
        // The `stop` comes a few ms after the exit; if Docker's oldest event is newer than the
        // exit, that `stop` may be among the events it has already dropped.
        match self.oldest_nano {
            Some(oldest) if oldest <= finished_at_nano => StopHistory::NoStop,
            _ => StopHistory::CannotTell,
        }
    }
}

/// Why a death found at start-up is not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Exit code 0 (or none): the program ended on its own.
    CleanExit,
    /// Longer ago than the look-back, or no finish time.
    TooOld,
    /// A `stop` followed the last `start` (in the stream or in Docker's history).
    StoppedByAPerson,
    /// Docker's history no longer covers the exit; it may have been a person's stop.
    CannotTell,
}

impl Skip {
    /// For the log line.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::CleanExit => "exited cleanly; not reported",
            Skip::TooOld => "died before the start-up look-back; history, not reported",
            Skip::StoppedByAPerson => "stopped by a person; not reported",
            Skip::CannotTell => {
                "exited while the monitor was not running; cannot tell whether a person stopped it; not reported"
            }
        }
    }
}

/// What to do about one container found dead at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Report it (`container_unhealthy`, `detected_by: resync`) and track it.
    Report(AlertKind),
    /// Reported before this monitor started: track it silently.
    AlreadyReported(AlertKind),
    Skip(Skip),
}

/// The first step, from inspect and the stream alone: decided, or Docker's event history is
/// needed (asked only for the few containers that get this far).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triage {
    Decided(Verdict),
    AskHistory(AlertKind),
}

pub fn triage(
    id: &str,
    e: &Exit,
    reported: &Reported,
    now_nano: i64,
    lookback: Duration,
) -> Triage {
    if e.exit_code.unwrap_or(0) == 0 {
        // An OOM kill always ends in 137; `OOMKilled` with exit 0 means a process inside was
        // killed earlier and the container later ended cleanly.
        return Triage::Decided(Verdict::Skip(Skip::CleanExit));
    }
    let lookback = i64::try_from(lookback.as_nanos()).unwrap_or(i64::MAX);
    let Some(finished) = e
        .finished_at_nano
        .filter(|f| now_nano.saturating_sub(*f) <= lookback)
    else {
        return Triage::Decided(Verdict::Skip(Skip::TooOld));
    };
    if reported.death_near(id, finished) {
        return Triage::Decided(Verdict::AlreadyReported(e.kind()));
    }
    if reported.stop_near(id, finished) {
        return Triage::Decided(Verdict::Skip(Skip::StoppedByAPerson));
    }
    Triage::AskHistory(e.kind())
}

/// The second step, with Docker's event history.
pub fn settle(kind: AlertKind, history: StopHistory) -> Verdict {
    match (history, kind) {
        (StopHistory::PersonStopped, _) => Verdict::Skip(Skip::StoppedByAPerson),
        (StopHistory::NoStop, _) | (StopHistory::CannotTell, AlertKind::OomKilled) => {
            Verdict::Report(kind)
        }
        (StopHistory::CannotTell, _) => Verdict::Skip(Skip::CannotTell),
    }
}

/// Both steps, for a history already known.
pub fn decide(
    id: &str,
    e: &Exit,
    reported: &Reported,
    now_nano: i64,
    lookback: Duration,
    history: StopHistory,
) -> Verdict {
    match triage(id, e, reported, now_nano, lookback) {
        Triage::Decided(v) => v,
        Triage::AskHistory(kind) => settle(kind, history),
    }
}

/// One dead container's verdict, with what its report carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Death {
    pub verdict: Verdict,
    pub exit_code: Option<i64>,
    pub finished_at_nano: Option<i64>,
}

/// Everything start-up found out, handed to [`crate::detect::Detector::start`].
#[derive(Debug, Default)]
pub struct Startup {
    /// Per container id: containers that were dead at start-up.
    pub deaths: HashMap<String, Death>,
    /// Per container id: an unhealthy alert already open in the stream, with its `since`.
    pub open_unhealthy: HashMap<String, Option<i64>>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::{TimeZone, Utc};
    use hemostat_common::events::{ContainerAlert, ContainerRef, Detection, Severity};

    const S: i64 = 1_000_000_000;
    /// The container finished at this time (ns); "now" is a minute later.
    const FINISHED: i64 = 1_800_000_000 * S;
    const NOW: i64 = FINISHED + 60 * S;
    const HOUR: Duration = Duration::from_secs(3600);

    fn alert(
        host: &str,
        id: &str,
        kind: AlertKind,
        since_ns: Option<i64>,
        wrap: fn(ContainerAlert) -> Payload,
    ) -> Envelope {
        let t = since_ns.map(|n| Utc.timestamp_nanos(n));
        Envelope::new(
            "monitor",
            host,
            wrap(ContainerAlert {
                container: ContainerRef {
                    id: id.into(),
                    name: "web".into(),
                    image: "patient".into(),
                    labels: Default::default(),
                },
                kind,
                severity: Severity::Critical,
                user_initiated: false,
                reminder: false,
                detected_by: Detection::Event,
                summary: String::new(),
                state: None,
                metrics: None,
                breach: None,
                since: t,
                docker_event_time: t,
                protected: false,
                logs: None,
            }),
        )
    }

    fn died(at: i64) -> Envelope {
        alert(
            "h",
            "c1",
            AlertKind::Died,
            Some(at),
            Payload::ContainerUnhealthy,
        )
    }

    fn exit(code: i64, oom: bool, finished: Option<i64>) -> Exit {
        Exit {
            exit_code: Some(code),
            oom_killed: oom,
            finished_at_nano: finished,
        }
    }

    #[test]
    fn the_decision_table() {
        use AlertKind::*;
        use StopHistory::*;
        let crash = exit(3, false, Some(FINISHED));
        let oom = exit(137, true, Some(FINISHED));
        // (what, the exit, the stream newest first, the event history, the verdict)
        let cases: Vec<(&str, Exit, Vec<Envelope>, StopHistory, Verdict)> = vec![
            ("recent crash", crash, vec![], NoStop, Verdict::Report(Died)),
            (
                "recent OOM kill",
                oom,
                vec![],
                NoStop,
                Verdict::Report(OomKilled),
            ),
            (
                "old death is history",
                exit(3, false, Some(NOW - 2 * 3600 * S)),
                vec![],
                NoStop,
                Verdict::Skip(Skip::TooOld),
            ),
            (
                "no finish time",
                exit(3, false, None),
                vec![],
                NoStop,
                Verdict::Skip(Skip::TooOld),
            ),
            (
                "exit 0",
                exit(0, false, Some(FINISHED)),
                vec![],
                NoStop,
                Verdict::Skip(Skip::CleanExit),
            ),
            (
                "exit 0 after an OOM inside",
                exit(0, true, Some(FINISHED)),
                vec![],
                NoStop,
                Verdict::Skip(Skip::CleanExit),
            ),
            (
                "reported at event time (die 5 ms after FinishedAt)",
                crash,
                vec![died(FINISHED + 5_000_000)],
                NoStop,
                Verdict::AlreadyReported(Died),
            ),
            (
                "reported at a previous start-up, OOM",
                oom,
                vec![alert(
                    "h",
                    "c1",
                    OomKilled,
                    Some(FINISHED),
                    Payload::ContainerUnhealthy,
                )],
                CannotTell,
                Verdict::AlreadyReported(OomKilled),
            ),
            (
                "an earlier death of the same container is not this one",
                crash,
                vec![died(FINISHED - 10 * S)],
                NoStop,
                Verdict::Report(Died),
            ),
            (
                "another host's report of the same id does not count",
                crash,
                vec![alert(
                    "other",
                    "c1",
                    Died,
                    Some(FINISHED),
                    Payload::ContainerUnhealthy,
                )],
                NoStop,
                Verdict::Report(Died),
            ),
            (
                "another container's report does not count",
                crash,
                vec![alert(
                    "h",
                    "c2",
                    Died,
                    Some(FINISHED),
                    Payload::ContainerUnhealthy,
                )],
                NoStop,
                Verdict::Report(Died),
            ),
            (
                "a recovery is not a report of the death",
                crash,
                vec![alert(
                    "h",
                    "c1",
                    Died,
                    Some(FINISHED),
                    Payload::ContainerRecovered,
                )],
                NoStop,
                Verdict::Report(Died),
            ),
            (
                "history cannot tell: an exit is not reported",
                crash,
                vec![],
                CannotTell,
                Verdict::Skip(Skip::CannotTell),
            ),
            (
                "history cannot tell: an OOM kill still is",
                oom,
                vec![],
                CannotTell,
                Verdict::Report(OomKilled),
            ),
            (
                "a stop in the history",
                exit(143, false, Some(FINISHED)),
                vec![],
                PersonStopped,
                Verdict::Skip(Skip::StoppedByAPerson),
            ),
            (
                "a stop in the history wins over an OOM flag",
                oom,
                vec![],
                PersonStopped,
                Verdict::Skip(Skip::StoppedByAPerson),
            ),
            (
                "a stop the monitor saw, history long gone",
                exit(137, false, Some(FINISHED)),
                vec![alert(
                    "h",
                    "c1",
                    Stopped,
                    Some(FINISHED + 3_000_000),
                    Payload::ContainerUserAction,
                )],
                CannotTell,
                Verdict::Skip(Skip::StoppedByAPerson),
            ),
        ];
        for (what, e, stream, history, want) in cases {
            let reported = Reported::from_envelopes(&stream, "h");
            assert_eq!(
                decide("c1", &e, &reported, NOW, HOUR, history),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn a_lookback_of_zero_reports_nothing() {
        let e = exit(3, false, Some(NOW - 1));
        assert_eq!(
            triage("c1", &e, &Reported::default(), NOW, Duration::ZERO),
            Triage::Decided(Verdict::Skip(Skip::TooOld))
        );
    }

    #[test]
    fn the_history_needs_the_exit_still_in_it() {
        use StopHistory::*;
        // (container events oldest first, oldest event held, verdict for c1)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<i64>, StopHistory);
        let cases: &[Case<'_>] = &[
            (
                &[("c1", "start"), ("c1", "die")],
                Some(FINISHED - S),
                NoStop,
            ),
            (&[], Some(FINISHED - S), NoStop),
            (
                &[
                    ("c1", "start"),
                    ("c1", "kill"),
                    ("c1", "die"),
                    ("c1", "stop"),
                ],
                Some(FINISHED - S),
                PersonStopped,
            ),
            (&[("c1", "stop")], Some(FINISHED + S), PersonStopped),
            (
                &[("c1", "stop"), ("c1", "start")],
                Some(FINISHED - S),
                NoStop,
            ),
            (
                &[("c1", "start"), ("c2", "stop")],
                Some(FINISHED - S),
                NoStop,
            ),
            (&[("c1", "start")], Some(FINISHED + 1), CannotTell),
            (&[], None, CannotTell),
        ];
        for (events, oldest, want) in cases {
            let h = EventHistory::new(
                *oldest,
                events.iter().map(|(id, a)| (id.to_string(), a.to_string())),
            );
            assert_eq!(
                h.stop_history("c1", FINISHED),
                *want,
                "{events:?} oldest={oldest:?}"
            );
        }
    }

    #[test]
    fn an_unhealthy_alert_is_open_until_a_recovery_follows_it() {
        let unhealthy = |since| {
            alert(
                "h",
                "c1",
                AlertKind::Unhealthy,
                Some(since),
                Payload::ContainerUnhealthy,
            )
        };
        let healthy = |since| {
            alert(
                "h",
                "c1",
                AlertKind::Unhealthy,
                Some(since),
                Payload::ContainerRecovered,
            )
        };
        let died_ = died(FINISHED);
        // (stream newest first, open?)
        let cases: Vec<(Vec<Envelope>, Option<Option<i64>>)> = vec![
            (vec![], None),
            (vec![unhealthy(5)], Some(Some(5))),
            (vec![healthy(5), unhealthy(5)], None),
            (vec![unhealthy(9), healthy(5), unhealthy(5)], Some(Some(9))),
            (vec![died_.clone(), unhealthy(5)], Some(Some(5))),
            (vec![died_], None),
        ];
        for (stream, want) in cases {
            let r = Reported::from_envelopes(&stream, "h");
            assert_eq!(r.open_unhealthy("c1"), want, "{} entries", stream.len());
        }
    }
}
