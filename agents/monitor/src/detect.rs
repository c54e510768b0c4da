//! Turning Docker's container events into alert decisions: a pure state machine with explicit
//! time, so every ordering of events seen on a real engine is a one-line test.
//!
//! The subtle part is telling a person's `docker stop` from a failure. Docker reports a stop
//! as `kill` (SIGTERM) → `die` → `stop`, with `stop` arriving a few milliseconds *after*
//! `die`; a crash, `docker kill` or an OOM kill has no `stop` at all. So a `die` that followed
//! a non-SIGKILL `kill` is held for a short settle window to see whether `stop` follows; every
//! other `die` is reported at once, which keeps crash detection instant.
//!
//! A `stop` is not yet a person's stop either: `docker restart` (and so every restart hemostat
//! makes) is `kill` → `die` → `stop` → `start` → `restart`. So a `stop` is held for the restart
//! settle window, and a `start` inside it makes the whole sequence a restart: nothing to report.
//!
//! At start-up the detector is told what the monitor's glue found out about containers that
//! died while no monitor was watching ([`crate::startup`]); it reports and tracks them like any
//! other problem.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use hemostat_common::events::{AlertKind, Detection};
use hemostat_common::scrub::{scrub, scrub_labels};

use crate::startup::{Startup, Verdict};

/// The parts of a Docker event the detector needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerEvent {
    pub id: String,
    /// `die`, `kill`, `health_status: unhealthy`, ...
    pub action: String,
    /// Actor attributes: `name`, `image`, `exitCode`, `signal`, and every container label.
    pub attributes: HashMap<String, String>,
    /// Docker's `timeNano`.
    pub time_nano: i64,
}

impl DockerEvent {
    /// The event with its attribute values (labels, image, exit code...) scrubbed of secrets,
    /// the container's name kept as it is (see [`Listed::scrubbed`]). The monitor calls this
    /// once per event, right after the scope check (which reads the labels as the user wrote
    /// them), so nothing downstream sees raw text.
    pub fn scrubbed(self) -> Self {
        let mut attributes = self.attributes;
        let name = attributes.remove("name");
        let mut attributes = scrub_labels(attributes);
        if let Some(name) = name {
            attributes.insert("name".into(), name);
        }
        Self { attributes, ..self }
    }

    pub fn name(&self) -> &str {
        self.attributes
            .get("name")
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// Whether a decision reports a problem, a person's action, or a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Problem,
    UserAction,
    Recovered,
}

/// "Publish this": what the monitor glue enriches (inspect) and sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub container_id: String,
    pub name: String,
    pub image: String,
    pub attributes: HashMap<String, String>,
    pub kind: AlertKind,
    pub class: Class,
    pub detected_by: Detection,
    pub exit_code: Option<i64>,
    pub reminder: bool,
    /// The Docker event time (ns) this comes from, if any.
    pub event_time_nano: Option<i64>,
    /// When the problem was first seen (reminders and recoveries carry the original time).
    pub since_nano: Option<i64>,
}

/// What a re-listing after a gap says about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// `running`, `exited`, `paused`, ...
    pub state: String,
    /// From the status text `Exited (3) 2 seconds ago`.
    pub exit_code: Option<i64>,
    /// `healthy`, `unhealthy`, `starting`, or none.
    pub health: Option<String>,
}

impl Listed {
    /// The listed container with its image and label values scrubbed of secrets; see
    /// [`DockerEvent::scrubbed`].
    ///
    /// The name is kept as it is, on purpose. Docker allows only `[a-zA-Z0-9][a-zA-Z0-9_.-]`
    /// in a name, so none of the rules that need context (`name=value`, URLs, headers, key
    /// blocks) can match inside one; only a whole-token shape could, and ordinary names do
    /// match the loose ones (`sk-proxy-worker-2024`). And a name is an identity: the responder
    /// files a container's backoff, breaker and lock under it, tells a person's stop by it and
    /// finds a recreated container by it, so two names both turned into `[REDACTED]` would
    /// share one history.
    pub fn scrubbed(self) -> Self {
        Self {
            image: scrub(&self.image),
            labels: scrub_labels(self.labels),
            ..self
        }
    }

    /// Parses the parts of Docker's human status line that the list API does not give as
    /// fields on older engines: `Exited (137) 3 seconds ago`, `Up 2 minutes (unhealthy)`.
    pub fn parse_status(status: &str) -> (Option<i64>, Option<String>) {
        let exit = status
            .strip_prefix("Exited (")
            .and_then(|rest| rest.split(')').next())
            .and_then(|code| code.trim().parse().ok());
        let health = if status.contains("(unhealthy)") {
            Some("unhealthy")
        } else if status.contains("(healthy)") {
            Some("healthy")
        } else if status.contains("(health: starting)") {
            Some("starting")
        } else {
            None
        };
        (exit, health.map(str::to_owned))
    }
}

#[derive(Debug, Clone, Copy)]
struct Open {
    since_nano: Option<i64>,
    last_notified: Instant,
}

/// A `stop` held for the restart settle window, with what its report would say.
#[derive(Debug)]
struct HeldStop {
    deadline: Instant,
    stop: DockerEvent,
    /// The exit code of the `die` that came before it.
    exit: Option<i64>,
    /// When the container stopped: its `die`, else the `stop` itself.
    time_nano: i64,
}

#[derive(Debug, Default)]
struct Tracked {
    name: String,
    image: String,
    attributes: HashMap<String, String>,
    /// When a non-SIGKILL signal was last sent (the first step of `docker stop`).
    term_kill_at: Option<Instant>,
    /// A `die` waiting to see whether `stop` follows.
    pending_die: Option<(Instant, DockerEvent)>,
    /// An `oom` waiting to see whether `die` follows.
    pending_oom: Option<(Instant, DockerEvent)>,
    /// A `stop` waiting to see whether `start` follows (then it was a restart).
    pending_stop: Option<HeldStop>,
    running: bool,
    open: BTreeMap<AlertKind, Open>,
}

/// Detector settings.
#[derive(Debug, Clone, Copy)]
pub struct DetectConfig {
    /// How long a `die` after SIGTERM waits for the `stop` that marks a person's stop.
    pub stop_settle: Duration,
    /// How long after a SIGTERM a `die` may still be that stop's (covers `docker stop -t`).
    pub stop_window: Duration,
    /// How long a `stop` waits for the `start` that makes it a restart, not a person's stop.
    pub restart_settle: Duration,
    /// How long an `oom` waits for the `die` that would make it an OOM kill.
    pub oom_settle: Duration,
    /// How often a problem that is still open is reported again.
    pub reminder_interval: Duration,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            stop_settle: Duration::from_millis(300),
            stop_window: Duration::from_secs(600),
            restart_settle: Duration::from_secs(1),
            oom_settle: Duration::from_millis(500),
            reminder_interval: Duration::from_secs(600),
        }
    }
}

/// The per-host event state machine.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectConfig,
    containers: HashMap<String, Tracked>,
    /// The newest event time processed, and the events seen at exactly that time: a reconnect
    /// asks Docker for events `since` then, and these are the duplicates to skip.
    last_time_nano: i64,
    seen_at_last: HashSet<(String, String)>,
}

fn is_sigkill(signal: Option<&String>) -> bool {
    matches!(
        signal.map(String::as_str),
        Some("9") | Some("SIGKILL") | Some("KILL")
    )
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Detector {
        Detector {
            cfg,
            containers: HashMap::new(),
            last_time_nano: 0,
            seen_at_last: HashSet::new(),
        }
    }

    /// The newest Docker event time processed (ns), for `since` on reconnect.
    pub fn last_event_time_nano(&self) -> i64 {
        self.last_time_nano
    }

    /// Processes one event (already known to be in scope) at `now`.
    pub fn on_event(&mut self, ev: DockerEvent, now: Instant) -> Vec<Decision> {
        // Skip replays after a reconnect with `since`.
        let key = (ev.id.clone(), ev.action.clone());
        if ev.time_nano < self.last_time_nano
            || (ev.time_nano == self.last_time_nano && self.seen_at_last.contains(&key))
        {
            return Vec::new();
        }
        if ev.time_nano > self.last_time_nano {
            self.last_time_nano = ev.time_nano;
            self.seen_at_last.clear();
        }
        self.seen_at_last.insert(key);

        let mut out = Vec::new();
        let action = ev.action.as_str();
        if action == "destroy" {
            // A removed container (`--rm`) can no longer be stopped by a person's `stop`;
            // settle what is pending now, then forget it.
            out.extend(self.flush_pending(&ev.id, now, true));
            self.containers.remove(&ev.id);
            return out;
        }

        let t = self.containers.entry(ev.id.clone()).or_default();
        if let Some(name) = ev.attributes.get("name") {
            t.name = name.clone();
        }
        if let Some(image) = ev.attributes.get("image") {
            t.image = image.clone();
        }
        t.attributes = ev.attributes.clone();

        match action {
            "kill" if !is_sigkill(ev.attributes.get("signal")) => {
                t.term_kill_at = Some(now);
            }
            "oom" => {
                t.pending_oom = Some((now + self.cfg.oom_settle, ev));
            }
            "die" => {
                t.running = false;
                let after_term = t
                    .term_kill_at
                    .is_some_and(|at| now.duration_since(at) <= self.cfg.stop_window);
                t.term_kill_at = None;
                if after_term {
                    t.pending_die = Some((now + self.cfg.stop_settle, ev));
                } else {
                    let kind = if t.pending_oom.take().is_some() {
                        AlertKind::OomKilled
                    } else {
                        AlertKind::Died
                    };
                    out.extend(problem(t, &ev, kind, now));
                }
            }
            "stop" => {
                // The `die` it follows is not a failure; whether it was a person's stop or a
                // restart, the `start` that may follow decides.
                let (exit, time_nano) = match t.pending_die.take() {
                    Some((_, die)) => (exit_code(&die), die.time_nano),
                    None => (None, ev.time_nano),
                };
                t.pending_stop = Some(HeldStop {
                    deadline: now + self.cfg.restart_settle,
                    stop: ev,
                    exit,
                    time_nano,
                });
            }
            "start" => {
                t.running = true;
                t.term_kill_at = None;
                // A `stop` then a `start` is a restart: neither a person's stop nor a failure.
                t.pending_stop = None;
                out.extend(settle_die(t, now));
                for kind in [AlertKind::Died, AlertKind::OomKilled] {
                    if let Some(open) = t.open.remove(&kind) {
                        let mut d = decision(t, &ev, kind, Class::Recovered, None, ev.time_nano);
                        d.since_nano = open.since_nano;
                        out.push(d);
                    }
                }
            }
            "pause" => {
                out.push(decision(
                    t,
                    &ev,
                    AlertKind::Paused,
                    Class::UserAction,
                    None,
                    ev.time_nano,
                ));
            }
            "unpause" => {
                out.push(decision(
                    t,
                    &ev,
                    AlertKind::Unpaused,
                    Class::UserAction,
                    None,
                    ev.time_nano,
                ));
            }
            a if a.starts_with("health_status") => {
                let status = a.split(':').nth(1).map(str::trim).unwrap_or_default();
                match status {
                    "unhealthy" => out.extend(problem(t, &ev, AlertKind::Unhealthy, now)),
                    "healthy" => {
                        if let Some(open) = t.open.remove(&AlertKind::Unhealthy) {
                            let mut d = decision(
                                t,
                                &ev,
                                AlertKind::Unhealthy,
                                Class::Recovered,
                                None,
                                ev.time_nano,
                            );
                            d.since_nano = open.since_nano;
                            out.push(d);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        out
    }

    /// Resolves a pending `die` (no `stop` came: a failure), a pending `stop` (no `start` came:
    /// a person's stop) and a pending `oom`.
    fn flush_pending(&mut self, id: &str, now: Instant, include_oom: bool) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some(t) = self.containers.get_mut(id) else {
            return out;
        };
        out.extend(settle_die(t, now));
        out.extend(settle_stop(t));
        if include_oom && let Some((_, oom)) = t.pending_oom.take() {
            out.extend(problem(t, &oom, AlertKind::Oom, now));
        }
        out
    }

    /// When [`Detector::on_tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.containers
            .values()
            .flat_map(|t| {
                let reminders = t
                    .open
                    .values()
                    .map(|o| o.last_notified + self.cfg.reminder_interval);
                t.pending_die
                    .iter()
                    .map(|(d, _)| *d)
                    .chain(t.pending_oom.iter().map(|(d, _)| *d))
                    .chain(t.pending_stop.iter().map(|s| s.deadline))
                    .chain(reminders)
            })
            .min()
    }

    /// Settles pending events whose window has passed and emits due reminders.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        let reminder_interval = self.cfg.reminder_interval;
        for t in self.containers.values_mut() {
            if t.pending_die
                .as_ref()
                .is_some_and(|(deadline, _)| *deadline <= now)
            {
                out.extend(settle_die(t, now));
            }
            if t.pending_stop.as_ref().is_some_and(|s| s.deadline <= now) {
                out.extend(settle_stop(t));
            }
            if let Some((deadline, _)) = &t.pending_oom
                && *deadline <= now
                && t.pending_die.is_none()
                && let Some((_, oom)) = t.pending_oom.take()
            {
                out.extend(problem(t, &oom, AlertKind::Oom, now));
            }
            // An OOM inside a running container is a one-off event, not a lasting state.
            t.open.remove(&AlertKind::Oom);
            let due: Vec<AlertKind> = t
                .open
                .iter()
                .filter(|(_, o)| o.last_notified + reminder_interval <= now)
                .map(|(k, _)| *k)
                .collect();
            for kind in due {
                if let Some(open) = t.open.get_mut(&kind) {
                    open.last_notified = now;
                    let since = open.since_nano;
                    out.push(Decision {
                        container_id: String::new(),
                        name: t.name.clone(),
                        image: t.image.clone(),
                        attributes: t.attributes.clone(),
                        kind,
                        class: Class::Problem,
                        detected_by: Detection::Event,
                        exit_code: None,
                        reminder: true,
                        event_time_nano: None,
                        since_nano: since,
                    });
                }
            }
        }
        // Fill in ids for reminders (the loop above cannot borrow the map's keys).
        for d in out.iter_mut().filter(|d| d.container_id.is_empty()) {
            if let Some((id, _)) = self
                .containers
                .iter()
                .find(|(_, t)| t.name == d.name && t.open.contains_key(&d.kind))
            {
                d.container_id = id.clone();
            }
        }
        out
    }

    /// The first listing, at start-up. Takes in every in-scope container; reports the deaths
    /// that [`crate::startup::decide`] said to report and the containers unhealthy now; and
    /// tracks, without reporting them again, the problems an earlier monitor already reported,
    /// so that their reminders and recoveries still come.
    pub fn start(&mut self, listed: &[Listed], startup: &Startup, now: Instant) -> Vec<Decision> {
        self.containers.clear();
        let mut out = Vec::new();
        for l in listed {
            let t = self.track(l);
            let death = startup.deaths.get(&l.id);
            let open = death.and_then(|d| match d.verdict {
                Verdict::Report(kind) => Some((d, kind, true)),
                Verdict::AlreadyReported(kind) => Some((d, kind, false)),
                Verdict::Skip(_) => None,
            });
            if let Some((death, kind, report)) = open {
                t.open.insert(
                    kind,
                    Open {
                        since_nano: death.finished_at_nano,
                        last_notified: now,
                    },
                );
                if report {
                    out.push(listed_decision(
                        l,
                        t,
                        kind,
                        Class::Problem,
                        death.exit_code,
                        death.finished_at_nano,
                    ));
                }
            }
            if t.running && l.health.as_deref() == Some("unhealthy") {
                let known = startup.open_unhealthy.get(&l.id);
                t.open.insert(
                    AlertKind::Unhealthy,
                    Open {
                        since_nano: known.copied().flatten(),
                        last_notified: now,
                    },
                );
                if known.is_none() {
                    out.push(listed_decision(
                        l,
                        t,
                        AlertKind::Unhealthy,
                        Class::Problem,
                        None,
                        None,
                    ));
                }
            }
        }
        out
    }

    /// Compares a fresh listing of in-scope containers with what the detector believed, after
    /// the event stream was lost, and reports what changed meanwhile.
    pub fn resync(&mut self, listed: &[Listed], now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        let present: HashSet<&str> = listed.iter().map(|l| l.id.as_str()).collect();
        self.containers
            .retain(|id, _| present.contains(id.as_str()));
        for l in listed {
            let known = self.containers.contains_key(&l.id);
            let was_running = self.containers.get(&l.id).is_some_and(|t| t.running);
            let t = self.track(l);
            let running = t.running;
            if known
                && was_running
                && !running
                && l.state != "paused"
                && !t.open.contains_key(&AlertKind::Died)
            {
                t.open.insert(
                    AlertKind::Died,
                    Open {
                        since_nano: None,
                        last_notified: now,
                    },
                );
                out.push(listed_decision(
                    l,
                    t,
                    AlertKind::Died,
                    Class::Problem,
                    l.exit_code,
                    None,
                ));
            }
            if running {
                for kind in [AlertKind::Died, AlertKind::OomKilled] {
                    if t.open.remove(&kind).is_some() {
                        out.push(listed_decision(l, t, kind, Class::Recovered, None, None));
                    }
                }
            }
            let unhealthy = running && l.health.as_deref() == Some("unhealthy");
            if unhealthy && !t.open.contains_key(&AlertKind::Unhealthy) {
                t.open.insert(
                    AlertKind::Unhealthy,
                    Open {
                        since_nano: None,
                        last_notified: now,
                    },
                );
                out.push(listed_decision(
                    l,
                    t,
                    AlertKind::Unhealthy,
                    Class::Problem,
                    None,
                    None,
                ));
            } else if !unhealthy
                && l.health.as_deref() == Some("healthy")
                && t.open.remove(&AlertKind::Unhealthy).is_some()
            {
                out.push(listed_decision(
                    l,
                    t,
                    AlertKind::Unhealthy,
                    Class::Recovered,
                    None,
                    None,
                ));
            }
        }
        out
    }

    /// Takes in a listed container's name, image, labels and whether it runs.
    fn track(&mut self, l: &Listed) -> &mut Tracked {
        let t = self.containers.entry(l.id.clone()).or_default();
        t.name = l.name.clone();
        t.image = l.image.clone();
        if t.attributes.is_empty() {
            t.attributes = l.labels.clone();
            t.attributes.insert("name".into(), l.name.clone());
            t.attributes.insert("image".into(), l.image.clone());
        }
        t.running = l.state == "running";
        t
    }

    /// Number of containers with state (for metrics).
    pub fn tracked(&self) -> usize {
        self.containers.len()
    }
}

/// A decision from a listing rather than an event.
fn listed_decision(
    l: &Listed,
    t: &Tracked,
    kind: AlertKind,
    class: Class,
    exit: Option<i64>,
    since_nano: Option<i64>,
) -> Decision {
    Decision {
        container_id: l.id.clone(),
        name: t.name.clone(),
        image: t.image.clone(),
        attributes: t.attributes.clone(),
        kind,
        class,
        detected_by: Detection::Resync,
        exit_code: exit,
        reminder: false,
        event_time_nano: None,
        since_nano,
    }
}

/// A held `stop` whose `start` never came: a person's stop. Whatever failure was open is
/// theirs now.
fn settle_stop(t: &mut Tracked) -> Option<Decision> {
    let held = t.pending_stop.take()?;
    t.open.remove(&AlertKind::Died);
    t.open.remove(&AlertKind::OomKilled);
    Some(decision(
        t,
        &held.stop,
        AlertKind::Stopped,
        Class::UserAction,
        held.exit,
        held.time_nano,
    ))
}

/// A held `die` whose `stop` never came: a failure (an OOM kill if an `oom` preceded it).
fn settle_die(t: &mut Tracked, now: Instant) -> Option<Decision> {
    let (_, die) = t.pending_die.take()?;
    let kind = if t.pending_oom.take().is_some() {
        AlertKind::OomKilled
    } else {
        AlertKind::Died
    };
    problem(t, &die, kind, now)
}

fn exit_code(ev: &DockerEvent) -> Option<i64> {
    ev.attributes.get("exitCode").and_then(|c| c.parse().ok())
}

fn decision(
    t: &Tracked,
    ev: &DockerEvent,
    kind: AlertKind,
    class: Class,
    exit: Option<i64>,
    time_nano: i64,
) -> Decision {
    Decision {
        container_id: ev.id.clone(),
        name: t.name.clone(),
        image: t.image.clone(),
        attributes: t.attributes.clone(),
        kind,
        class,
        detected_by: Detection::Event,
        exit_code: exit,
        reminder: false,
        event_time_nano: Some(time_nano),
        since_nano: Some(time_nano),
    }
}

/// Opens a problem and reports it, unless the same problem is already open (no spam).
fn problem(t: &mut Tracked, ev: &DockerEvent, kind: AlertKind, now: Instant) -> Option<Decision> {
    if t.open.contains_key(&kind) {
        return None;
    }
    t.open.insert(
        kind,
        Open {
            since_nano: Some(ev.time_nano),
            last_notified: now,
        },
    );
    Some(decision(
        t,
        ev,
        kind,
        Class::Problem,
        exit_code(ev),
        ev.time_nano,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ev(action: &str, extra: &[(&str, &str)], t_ms: i64) -> DockerEvent {
        let mut attributes: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes.insert("name".into(), "web".into());
        attributes.insert("image".into(), "patient".into());
        DockerEvent {
            id: "c1".into(),
            action: action.into(),
            attributes,
            time_nano: t_ms * 1_000_000,
        }
    }

    /// Feeds `(ms offset, action, attributes)` in order, ticking between events and, 5 s after
    /// the last one, long enough for every settle window; returns `(kind, class, exit)`.
    type Step<'a> = (u64, &'a str, &'a [(&'a str, &'a str)]);

    fn check(steps: &[Step<'_>]) -> Vec<(AlertKind, Class, Option<i64>)> {
        let mut d = Detector::new(DetectConfig::default());
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (ms, action, attrs) in steps {
            let now = t0 + MS * (*ms as u32);
            out.extend(d.on_tick(now));
            out.extend(d.on_event(ev(action, attrs, *ms as i64 + 1), now));
        }
        let last = steps.last().map_or(0, |(ms, _, _)| *ms);
        let end = t0 + MS * (last as u32) + Duration::from_secs(5);
        out.extend(d.on_tick(end));
        out.into_iter()
            .map(|d| (d.kind, d.class, d.exit_code))
            .collect()
    }

    use AlertKind::*;
    use Class::*;

    #[test]
    fn docker_kill_is_a_failure_at_once() {
        assert_eq!(
            check(&[
                (0, "kill", &[("signal", "9")]),
                (5, "die", &[("exitCode", "137")])
            ]),
            [(Died, Problem, Some(137))]
        );
    }

    #[test]
    fn a_crash_is_a_failure_at_once_even_without_settling() {
        let mut d = Detector::new(DetectConfig::default());
        let now = Instant::now();
        let out = d.on_event(ev("die", &[("exitCode", "3")], 1), now);
        assert_eq!(out.len(), 1, "reported in the same call, no settle wait");
        assert_eq!((out[0].kind, out[0].exit_code), (Died, Some(3)));
    }

    #[test]
    fn docker_stop_is_a_person_not_a_failure() {
        assert_eq!(
            check(&[
                (0, "kill", &[("signal", "15")]),
                (20, "die", &[("exitCode", "0")]),
                (28, "stop", &[]),
            ]),
            [(Stopped, UserAction, Some(0))]
        );
    }

    #[test]
    fn docker_stop_that_needs_sigkill_is_still_a_person() {
        assert_eq!(
            check(&[
                (0, "kill", &[("signal", "15")]),
                (10_000, "kill", &[("signal", "9")]),
                (10_005, "die", &[("exitCode", "137")]),
                (10_013, "stop", &[]),
            ]),
            [(Stopped, UserAction, Some(137))]
        );
    }

    #[test]
    fn sigterm_without_stop_is_a_failure_after_settling() {
        assert_eq!(
            check(&[
                (0, "kill", &[("signal", "SIGTERM")]),
                (5, "die", &[("exitCode", "143")])
            ]),
            [(Died, Problem, Some(143))]
        );
    }

    #[test]
    fn oom_then_die_is_one_oom_kill() {
        assert_eq!(
            check(&[(0, "oom", &[]), (3, "die", &[("exitCode", "137")])]),
            [(OomKilled, Problem, Some(137))]
        );
    }

    #[test]
    fn oom_without_die_is_an_oom_in_a_live_container() {
        assert_eq!(check(&[(0, "oom", &[])]), [(Oom, Problem, None)]);
    }

    #[test]
    fn health_transitions_alert_once_and_recover() {
        assert_eq!(
            check(&[
                (0, "health_status: unhealthy", &[]),
                (1000, "health_status: unhealthy", &[]),
                (2000, "health_status: healthy", &[]),
                (3000, "health_status: healthy", &[]),
            ]),
            [(Unhealthy, Problem, None), (Unhealthy, Recovered, None)]
        );
    }

    #[test]
    fn pause_and_unpause_are_a_persons_actions() {
        assert_eq!(
            check(&[(0, "pause", &[]), (10, "unpause", &[])]),
            [(Paused, UserAction, None), (Unpaused, UserAction, None)]
        );
    }

    #[test]
    fn crash_then_restart_recovers_and_a_crash_loop_alerts_each_time() {
        assert_eq!(
            check(&[
                (0, "die", &[("exitCode", "1")]),
                (100, "start", &[]),
                (200, "die", &[("exitCode", "1")]),
                (300, "start", &[]),
            ]),
            [
                (Died, Problem, Some(1)),
                (Died, Recovered, None),
                (Died, Problem, Some(1)),
                (Died, Recovered, None)
            ]
        );
    }

    #[test]
    fn docker_restart_is_not_a_stop_and_not_a_failure() {
        // docker restart (and every restart hemostat makes): kill(15), die, stop, start, restart
        assert_eq!(
            check(&[
                (0, "kill", &[("signal", "15")]),
                (10, "die", &[("exitCode", "0")]),
                (18, "stop", &[]),
                (40, "start", &[]),
                (41, "restart", &[]),
            ]),
            []
        );
    }

    #[test]
    fn restarts_and_stops_are_told_apart_by_the_start() {
        type Case<'a> = (
            &'a str,
            &'a [Step<'a>],
            &'a [(AlertKind, Class, Option<i64>)],
        );
        let cases: &[Case<'_>] = &[
            (
                "restart that needs SIGKILL after the stop timeout",
                &[
                    (0, "kill", &[("signal", "15")]),
                    (10_000, "kill", &[("signal", "9")]),
                    (10_005, "die", &[("exitCode", "137")]),
                    (10_013, "stop", &[]),
                    (10_250, "start", &[]),
                    (10_251, "restart", &[]),
                ],
                &[],
            ),
            (
                "stop, then a start after the window: a stop, nothing for the start",
                &[
                    (0, "kill", &[("signal", "15")]),
                    (20, "die", &[("exitCode", "0")]),
                    (28, "stop", &[]),
                    (1_500, "start", &[]),
                ],
                &[(Stopped, UserAction, Some(0))],
            ),
            (
                "stop, then destroy: the stop",
                &[
                    (0, "kill", &[("signal", "15")]),
                    (20, "die", &[("exitCode", "143")]),
                    (28, "stop", &[]),
                    (30, "destroy", &[]),
                ],
                &[(Stopped, UserAction, Some(143))],
            ),
            (
                "restart of an unhealthy container: the problem stays open until healthy",
                &[
                    (0, "health_status: unhealthy", &[]),
                    (100, "kill", &[("signal", "15")]),
                    (110, "die", &[("exitCode", "0")]),
                    (118, "stop", &[]),
                    (300, "start", &[]),
                    (301, "restart", &[]),
                    (3_000, "health_status: healthy", &[]),
                ],
                &[(Unhealthy, Problem, None), (Unhealthy, Recovered, None)],
            ),
            (
                "restart of a crashed container (no stop: it was not running)",
                &[
                    (0, "die", &[("exitCode", "1")]),
                    (500, "start", &[]),
                    (501, "restart", &[]),
                ],
                &[(Died, Problem, Some(1)), (Died, Recovered, None)],
            ),
        ];
        for (what, steps, want) in cases {
            assert_eq!(check(steps), *want, "{what}");
        }
    }

    #[test]
    fn a_stop_is_reported_when_the_restart_window_closes_or_at_once_on_destroy() {
        let mut d = Detector::new(DetectConfig::default());
        let t0 = Instant::now();
        assert!(
            d.on_event(ev("kill", &[("signal", "15")], 1), t0)
                .is_empty()
        );
        assert!(
            d.on_event(ev("die", &[("exitCode", "0")], 2), t0 + MS)
                .is_empty()
        );
        assert!(d.on_event(ev("stop", &[], 3), t0 + 9 * MS).is_empty());
        let window = t0 + 9 * MS + DetectConfig::default().restart_settle;
        assert_eq!(d.next_deadline(), Some(window));
        assert!(d.on_tick(window - MS).is_empty(), "inside the window");
        let out = d.on_tick(window);
        assert_eq!(
            out.iter()
                .map(|d| (d.kind, d.class, d.exit_code, d.event_time_nano))
                .collect::<Vec<_>>(),
            [(Stopped, UserAction, Some(0), Some(2_000_000))],
            "the stop, timed at its die"
        );
        assert_eq!(out[0].container_id, "c1");

        let mut d = Detector::new(DetectConfig::default());
        d.on_event(ev("stop", &[], 3), t0);
        let out = d.on_event(ev("destroy", &[], 4), t0 + MS);
        assert_eq!(
            out.iter().map(|d| (d.kind, d.class)).collect::<Vec<_>>(),
            [(Stopped, UserAction)],
            "a destroy settles a held stop at once"
        );
        assert!(d.on_tick(t0 + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn removed_container_with_pending_die_is_settled() {
        assert_eq!(
            check(&[
                (0, "kill", &[("signal", "15")]),
                (5, "die", &[("exitCode", "143")]),
                (6, "destroy", &[]),
            ]),
            [(Died, Problem, Some(143))]
        );
    }

    #[test]
    fn replayed_events_after_reconnect_are_skipped() {
        let mut d = Detector::new(DetectConfig::default());
        let now = Instant::now();
        let die = ev("die", &[("exitCode", "1")], 10);
        assert_eq!(d.on_event(die.clone(), now).len(), 1);
        assert!(d.on_event(die, now).is_empty());
        assert!(
            d.on_event(ev("start", &[], 5), now).is_empty(),
            "older than seen"
        );
    }

    #[test]
    fn open_problems_remind_at_the_interval() {
        let cfg = DetectConfig {
            reminder_interval: Duration::from_secs(60),
            ..DetectConfig::default()
        };
        let mut d = Detector::new(cfg);
        let t0 = Instant::now();
        assert_eq!(
            d.on_event(ev("health_status: unhealthy", &[], 1), t0).len(),
            1
        );
        assert!(d.on_tick(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_secs(60)));
        let r = d.on_tick(t0 + Duration::from_secs(61));
        assert_eq!(r.len(), 1);
        assert!(r[0].reminder);
        assert_eq!(r[0].container_id, "c1");
        assert!(d.on_tick(t0 + Duration::from_secs(90)).is_empty());
    }

    fn listed(state: &str, health: Option<&str>, exit: Option<i64>) -> Listed {
        Listed {
            id: "c1".into(),
            name: "web".into(),
            image: "patient".into(),
            labels: HashMap::new(),
            state: state.into(),
            exit_code: exit,
            health: health.map(str::to_owned),
        }
    }

    #[test]
    fn events_and_listings_are_scrubbed_by_label_and_text() {
        let token = "ghp_R2d2C3poLuke5kywalkerHanSolo0Chewie9";
        let labels = HashMap::from([
            ("hemostat.enable".to_owned(), "true".to_owned()),
            ("db.password".to_owned(), "plainword".to_owned()),
            ("note".to_owned(), format!("deploy token {token}")),
        ]);
        let mut attributes = labels.clone();
        attributes.insert("name".into(), "sk-proxy-worker-2024-prod1".into());
        attributes.insert("exitCode".into(), "3".into());
        let ev = DockerEvent {
            id: "c1".into(),
            action: "die".into(),
            attributes,
            time_nano: 1,
        }
        .scrubbed();
        assert_eq!(ev.name(), "sk-proxy-worker-2024-prod1");
        assert_eq!(ev.attributes["exitCode"], "3");
        assert_eq!(ev.attributes["hemostat.enable"], "true");
        assert_eq!(ev.attributes["db.password"], "[REDACTED]");
        assert_eq!(ev.attributes["note"], "deploy token [REDACTED]");

        let l = Listed {
            image: format!("registry.example.com/app:{token}"),
            labels,
            ..listed("running", None, None)
        }
        .scrubbed();
        assert_eq!(l.name, "web", "a name is an identity and is kept");
        assert_eq!(l.image, "registry.example.com/app:[REDACTED]");
        assert_eq!(l.labels["db.password"], "[REDACTED]");
        assert_eq!(l.labels["note"], "deploy token [REDACTED]");
    }

    #[test]
    fn resync_reports_what_happened_while_blind() {
        let mut d = Detector::new(DetectConfig::default());
        let now = Instant::now();
        assert!(
            d.start(&[listed("running", None, None)], &Startup::default(), now)
                .is_empty()
        );
        let out = d.resync(&[listed("exited", None, Some(2))], now);
        assert_eq!(
            out.iter()
                .map(|d| (d.kind, d.class, d.exit_code, d.detected_by))
                .collect::<Vec<_>>(),
            [(Died, Problem, Some(2), Detection::Resync)]
        );
        let out = d.resync(&[listed("running", Some("unhealthy"), None)], now);
        assert_eq!(
            out.iter().map(|d| (d.kind, d.class)).collect::<Vec<_>>(),
            [(Died, Recovered), (Unhealthy, Problem)]
        );
        assert!(
            d.resync(&[listed("running", Some("unhealthy"), None)], now)
                .is_empty()
        );
    }

    #[test]
    fn start_up_reports_what_it_was_told_and_tracks_the_rest() {
        use crate::startup::{Death, Skip};
        const FINISHED: i64 = 1_800_000_000_000_000_000;
        let death = |verdict| Death {
            verdict,
            exit_code: Some(3),
            finished_at_nano: Some(FINISHED),
        };
        let with_death = |verdict| Startup {
            deaths: HashMap::from([("c1".to_owned(), death(verdict))]),
            ..Startup::default()
        };
        let exited = listed("exited", None, Some(3));
        let sick = listed("running", Some("unhealthy"), None);
        let open_since = Some(5);
        // (what, listing, start-up facts, reported at start-up, then the event, its decisions)
        type Row<'a> = (
            &'a str,
            Listed,
            Startup,
            Vec<(AlertKind, Class, Option<i64>, Option<i64>)>,
            &'a str,
            Vec<(AlertKind, Class, Option<i64>)>,
        );
        let cases: Vec<Row<'_>> = vec![
            (
                "a death to report, then its recovery",
                exited.clone(),
                with_death(Verdict::Report(Died)),
                vec![(Died, Problem, Some(3), Some(FINISHED))],
                "start",
                vec![(Died, Recovered, Some(FINISHED))],
            ),
            (
                "an OOM kill to report",
                exited.clone(),
                with_death(Verdict::Report(OomKilled)),
                vec![(OomKilled, Problem, Some(3), Some(FINISHED))],
                "start",
                vec![(OomKilled, Recovered, Some(FINISHED))],
            ),
            (
                "a death reported before: silent, but its recovery comes",
                exited.clone(),
                with_death(Verdict::AlreadyReported(Died)),
                vec![],
                "start",
                vec![(Died, Recovered, Some(FINISHED))],
            ),
            (
                "a death not to report: nothing, and nothing on start",
                exited.clone(),
                with_death(Verdict::Skip(Skip::CannotTell)),
                vec![],
                "start",
                vec![],
            ),
            (
                "unhealthy now and not open in the stream: reported",
                sick.clone(),
                Startup::default(),
                vec![(Unhealthy, Problem, None, None)],
                "health_status: healthy",
                vec![(Unhealthy, Recovered, None)],
            ),
            (
                "unhealthy now and open in the stream: silent, the recovery keeps its since",
                sick.clone(),
                Startup {
                    open_unhealthy: HashMap::from([("c1".to_owned(), open_since)]),
                    ..Startup::default()
                },
                vec![],
                "health_status: healthy",
                vec![(Unhealthy, Recovered, open_since)],
            ),
        ];
        for (what, l, startup, want_start, action, want_after) in cases {
            let mut d = Detector::new(DetectConfig::default());
            let now = Instant::now();
            let out = d.start(&[l], &startup, now);
            assert_eq!(
                out.iter()
                    .map(|d| (d.kind, d.class, d.exit_code, d.since_nano))
                    .collect::<Vec<_>>(),
                want_start,
                "{what}"
            );
            assert!(
                out.iter().all(|d| d.detected_by == Detection::Resync),
                "{what}"
            );
            let out = d.on_event(ev(action, &[], 10), now);
            assert_eq!(
                out.iter()
                    .map(|d| (d.kind, d.class, d.since_nano))
                    .collect::<Vec<_>>(),
                want_after,
                "{what}"
            );
        }
    }

    #[test]
    fn a_problem_tracked_silently_at_start_up_is_reminded() {
        let cfg = DetectConfig {
            reminder_interval: Duration::from_secs(60),
            ..DetectConfig::default()
        };
        let mut d = Detector::new(cfg);
        let t0 = Instant::now();
        let startup = Startup {
            open_unhealthy: HashMap::from([("c1".to_owned(), Some(5))]),
            ..Startup::default()
        };
        assert!(
            d.start(&[listed("running", Some("unhealthy"), None)], &startup, t0)
                .is_empty()
        );
        let r = d.on_tick(t0 + Duration::from_secs(61));
        assert_eq!(
            r.iter()
                .map(|d| (d.kind, d.reminder, d.since_nano, d.container_id.as_str()))
                .collect::<Vec<_>>(),
            [(Unhealthy, true, Some(5), "c1")]
        );
    }

    #[test]
    fn status_lines_parse() {
        let cases = [
            ("Exited (137) 3 seconds ago", (Some(137), None)),
            ("Exited (0) About a minute ago", (Some(0), None)),
            ("Up 2 minutes (unhealthy)", (None, Some("unhealthy"))),
            ("Up 2 minutes (healthy)", (None, Some("healthy"))),
            ("Up 1 second (health: starting)", (None, Some("starting"))),
            ("Up 5 hours (Paused)", (None, None)),
            ("", (None, None)),
        ];
        for (status, (exit, health)) in cases {
            assert_eq!(
                Listed::parse_status(status),
                (exit, health.map(str::to_owned)),
                "{status}"
            );
        }
    }
}
