//! The responder's safety guards as one ordered table: each row is a [`Guard`] and a pure
//! function from the facts gathered for a request to an optional refusal. [`judge`] runs the
//! rows in order and the first refusal decides; its guard is named in the report and the audit.
//!
//! No I/O happens here. The responder gathers [`Facts`] first (a fresh inspect, Docker's event
//! history, its own state in Redis, the monitor's newest measurement) and acts or commits after.
//! A new safety rule is a new row and a line in the table test.
//!
//! Every action passes the same table: `restart`, `start`, `stop`, `cleanup`, and the
//! dependents restarted after a parent (each is a request of its own). Rows that do not concern
//! an action pass it.

use std::collections::HashMap;
use std::time::Duration;

use hemostat_common::events::{Action, Guard, Problem, ProblemKind};
use hemostat_common::scope::{self, Scope};

use crate::policy::{BackoffPolicy, BreakerPolicy, StormPolicy, WriteBudget};

/// A container as a fresh inspect shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    /// `running`, `exited`, `paused`, `restarting`, `dead`, `created`, `removing`.
    pub status: String,
    /// `starting`, `healthy`, `unhealthy`; `None` without a health check.
    pub health: Option<String>,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// `always`, `unless-stopped` or `on-failure`; `None` when Docker never restarts it.
    pub restart_policy: Option<String>,
    /// Restarts Docker's policy made since the container was last started by hand.
    pub restart_count: i64,
    /// Its CPU limit in cores, when it has one (CPU thresholds are judged against it).
    pub cpu_limit_cores: Option<f64>,
}

impl Container {
    pub fn running(&self) -> bool {
        self.status == "running"
    }

    /// Exited, dead or never started: down, and not on its way back.
    pub fn down(&self) -> bool {
        matches!(self.status.as_str(), "exited" | "dead" | "created")
    }

    pub fn unhealthy(&self) -> bool {
        self.health.as_deref() == Some("unhealthy")
    }
}

/// What the request is about, as Docker sees it now.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A host-wide action (`cleanup`): no container.
    Host,
    /// The named container no longer exists.
    Gone,
    Found(Box<Container>),
}

/// A person's action found in Docker's history or on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonAction {
    Paused,
    Stopped,
}

/// A fresh measurement of the metric a threshold problem names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measured {
    /// Not needed for this problem.
    NotNeeded,
    /// The newest measurement, taken after the request was made.
    Value(f64),
    /// No measurement newer than the request yet; `age_ms` is how old the request is.
    NotYet { age_ms: u64 },
}

/// Everything the guards look at, gathered before judging.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub now_ms: u64,
    /// The request's id: a lock it holds itself is no obstacle.
    pub job_id: String,
    pub action: Action,
    pub problem: Option<Problem>,
    pub target: Target,
    pub person: Option<PersonAction>,
    /// When this container (or, for a cleanup, the host's cleanups) was remediated, oldest
    /// first, within the longest window any guard looks at.
    pub history: Vec<u64>,
    pub breaker_open: bool,
    /// Containers of the host failing now that began failing within the storm window (the
    /// monitor reported them died, OOM-killed or unhealthy and not recovered since), and when.
    pub failing: Vec<(String, u64)>,
    /// In-scope containers on the host.
    pub in_scope: u32,
    /// Times of the host's Docker writes in the last minute.
    pub writes: Vec<u64>,
    pub last_cleanup_ms: Option<u64>,
    /// Who holds the container's lock (a request id), if anyone.
    pub lock_holder: Option<String>,
    pub measured: Measured,
    /// Who asked, when a person did ("restart now").
    pub requested_by: Option<String>,
    /// The maintenance window pausing remediation of this container now, if any: what it is
    /// (for the report) and when the last pausing window ends.
    pub maintenance: Option<(String, u64)>,
    /// Where a proposal for this request stands (approve mode).
    pub approval: Approval,
}

/// A proposal's state, from its record and a person's decision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Approval {
    /// Nothing proposed yet.
    #[default]
    NotProposed,
    /// Proposed; no decision yet. Expires at `expires_ms`.
    Pending { expires_ms: u64 },
    /// A person approved it (who).
    Approved(String),
    /// A person declined it (who).
    Declined(String),
}

impl Approval {
    /// From the proposal's expiry (if there is a proposal) and the decision (`approved:<who>` or
    /// `declined:<who>`, if one was made). A decision without a proposal counts for nothing.
    pub fn from_records(expires_ms: Option<u64>, decision: Option<&str>) -> Approval {
        let Some(expires_ms) = expires_ms else {
            return Approval::NotProposed;
        };
        match decision.and_then(|d| d.split_once(':')) {
            Some(("approved", who)) => Approval::Approved(who.to_owned()),
            Some(("declined", who)) => Approval::Declined(who.to_owned()),
            _ => Approval::Pending { expires_ms },
        }
    }
}

/// How often a request waiting for approval is judged again: a decision is acted on within
/// this, and a proposal whose problem went away is withdrawn within it.
pub const APPROVAL_RECHECK: Duration = Duration::from_secs(2);

/// The label that puts one container in approve mode (`approve`) or out of it (`auto`).
pub const LABEL_MODE: &str = "hemostat.mode";

/// The settings the guards apply.
#[derive(Debug, Clone)]
pub struct Policies {
    pub scope: Scope,
    pub dry_run: bool,
    pub backoff: BackoffPolicy,
    pub breaker: BreakerPolicy,
    pub storm: StormPolicy,
    pub writes: WriteBudget,
    pub cleanup_cooldown: Duration,
    /// How long a threshold request waits for a measurement newer than itself.
    pub measure_wait: Duration,
    /// Every action waits for a person's approval unless its container says `hemostat.mode=auto`.
    pub approve_all: bool,
    /// How long a proposal waits for a decision.
    pub approval_ttl: Duration,
}

/// Something a refusal sets off besides its report.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Tell a person: a protected container needs attention.
    EscalateProtected,
    /// The breaker opens now: escalate once per opening.
    OpenBreaker { in_window: u32 },
    /// Docker's restart policy keeps restarting it: escalate once.
    PolicyLoop { restarts: i64 },
    /// A storm holds: escalate once per storm, naming every container in it.
    Storm {
        failing: Vec<String>,
        limit: u32,
        in_scope: u32,
    },
    /// Propose the action to a person, once: it waits until `expires_ms` for a decision.
    Propose { expires_ms: u64 },
}

/// How a guard refuses.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Deliberately not done: reported `skipped`.
    Skip(String),
    /// A safety rule refuses: reported `rejected`.
    Reject(String, Option<Effect>),
    /// Not yet: the request waits (as a due time in Redis, not in a task) and is judged again
    /// from fresh facts at `until_ms`.
    Defer {
        until_ms: u64,
        why: String,
        effect: Option<Effect>,
    },
}

/// One row of the table.
pub struct Row {
    pub guard: Guard,
    pub check: fn(&Facts, &Policies) -> Option<Refusal>,
}

/// The guards in the order they are checked (DESIGN.md, safety rule 12).
pub const TABLE: &[Row] = &[
    Row {
        guard: Guard::Request,
        check: request,
    },
    Row {
        guard: Guard::Exists,
        check: exists,
    },
    Row {
        guard: Guard::Scope,
        check: in_scope,
    },
    Row {
        guard: Guard::Protection,
        check: protection,
    },
    Row {
        guard: Guard::Person,
        check: person,
    },
    Row {
        guard: Guard::RestartPolicy,
        check: restart_policy,
    },
    Row {
        guard: Guard::Problem,
        check: problem,
    },
    Row {
        guard: Guard::Maintenance,
        check: maintenance,
    },
    Row {
        guard: Guard::Storm,
        check: storm,
    },
    Row {
        guard: Guard::Breaker,
        check: breaker,
    },
    Row {
        guard: Guard::Backoff,
        check: backoff,
    },
    Row {
        guard: Guard::Cooldown,
        check: cooldown,
    },
    Row {
        guard: Guard::RateLimit,
        check: rate_limit,
    },
    Row {
        guard: Guard::Approval,
        check: approval,
    },
    Row {
        guard: Guard::Lock,
        check: lock,
    },
];

/// Runs the table: the first refusal and its guard, or `None` when every guard passes.
pub fn judge(f: &Facts, p: &Policies) -> Option<(Guard, Refusal)> {
    TABLE
        .iter()
        .find_map(|row| (row.check)(f, p).map(|r| (row.guard, r)))
}

/// How often a request held by a storm or another request's lock is judged again.
pub const RECHECK: Duration = Duration::from_secs(2);

/// The action's wire name.
pub fn verb(a: Action) -> &'static str {
    match a {
        Action::Restart => "restart",
        Action::Stop => "stop",
        Action::Start => "start",
        Action::Cleanup => "cleanup",
        Action::None => "none",
    }
}

fn container(f: &Facts) -> Option<&Container> {
    match &f.target {
        Target::Found(c) => Some(c),
        _ => None,
    }
}

fn secs(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

fn request(f: &Facts, _: &Policies) -> Option<Refusal> {
    match (f.action, &f.target) {
        (Action::None, _) => Some(Refusal::Skip("the verdict asks for no action".into())),
        (Action::Cleanup, _) => None,
        (a, Target::Host) => Some(Refusal::Reject(
            format!("{} needs a container and the request names none", verb(a)),
            None,
        )),
        _ => None,
    }
}

fn exists(f: &Facts, _: &Policies) -> Option<Refusal> {
    (f.target == Target::Gone).then(|| {
        Refusal::Reject(
            "container not found: it was removed (or recreated under another id and name)".into(),
            None,
        )
    })
}

fn in_scope(f: &Facts, p: &Policies) -> Option<Refusal> {
    let c = container(f)?;
    if p.scope.contains(&c.labels) {
        return None;
    }
    let why = if c.labels.contains_key(scope::LABEL_ENABLE) {
        "container opted out (hemostat.enable=false)".to_owned()
    } else if let Some((k, v)) = p
        .scope
        .require
        .as_ref()
        .filter(|(k, v)| c.labels.get(k) != Some(v))
    {
        format!("container is not in scope: it lacks the label {k}={v} (HEMOSTAT_SCOPE_LABEL)")
    } else {
        "container is not in scope (no hemostat.enable=true label and HEMOSTAT_MONITOR_ALL is off)"
            .to_owned()
    };
    Some(Refusal::Reject(why, None))
}

fn protection(f: &Facts, _: &Policies) -> Option<Refusal> {
    let c = container(f)?;
    scope::is_protected(&c.labels).then(|| {
        Refusal::Reject(
            "container is protected (hemostat.protect=true or a hemostat service): alert only, never touched".into(),
            Some(Effect::EscalateProtected),
        )
    })
}

fn person(f: &Facts, _: &Policies) -> Option<Refusal> {
    container(f)?;
    match f.person? {
        PersonAction::Paused => Some(Refusal::Skip(
            "paused by a person; a person's action wins".into(),
        )),
        PersonAction::Stopped => Some(Refusal::Skip(
            "stopped by a person (docker stop); a person's action wins".into(),
        )),
    }
}

fn restart_policy(f: &Facts, p: &Policies) -> Option<Refusal> {
    if !matches!(f.action, Action::Restart | Action::Start) {
        return None;
    }
    let c = container(f)?;
    let policy = c.restart_policy.as_deref()?;
    // A loop is many policy restarts and a recent death; five restarts a month ago are not one.
    // It is checked first: a looping container is "restarting" most of the time.
    let recent_death = c
        .finished_at_ms
        .is_some_and(|t| f.now_ms.saturating_sub(t) <= p.breaker.window.as_millis() as u64);
    if c.restart_count >= i64::from(p.breaker.threshold) && recent_death {
        return Some(Refusal::Reject(
            format!(
                "Docker's restart policy ({policy}) has restarted it {} times and it keeps failing; \
                 hemostat will not fight it: a person must look",
                c.restart_count
            ),
            Some(Effect::PolicyLoop {
                restarts: c.restart_count,
            }),
        ));
    }
    if c.status == "restarting" {
        return Some(Refusal::Skip(format!(
            "Docker's restart policy ({policy}) is restarting it; hemostat does not fight it"
        )));
    }
    None
}

/// `Ok` when the problem the request names still holds, else why not.
fn still_holds(f: &Facts, c: &Container, p: &Policies) -> Result<(), Refusal> {
    let skip = |why: String| Err(Refusal::Skip(why));
    let recovered = || {
        if c.restart_policy.is_some() && c.restart_count > 0 {
            "running again: recovered by Docker's restart policy".to_owned()
        } else {
            "running again: it recovered before hemostat acted".to_owned()
        }
    };
    match f.action {
        Action::Start if !c.down() => return skip(format!("already {}", c.status)),
        Action::Stop if !c.running() => return skip(format!("not running ({})", c.status)),
        _ => {}
    }
    let Some(problem) = &f.problem else {
        // A request that names no problem (an older analyzer, a hand-written request): act
        // only on a container that is visibly in trouble.
        return if c.down() || c.unhealthy() {
            Ok(())
        } else {
            skip(format!(
                "the request names no problem and the container is {} and not unhealthy",
                c.status
            ))
        };
    };
    let measured = |what: &str| -> Result<(), Refusal> {
        let th = problem.threshold.unwrap_or(0.0);
        match f.measured {
            Measured::Value(v) if v >= th => Ok(()),
            Measured::Value(v) => skip(format!(
                "{what} is {v:.1} now, under the {th:.1} threshold it crossed"
            )),
            Measured::NotYet { age_ms } if age_ms < p.measure_wait.as_millis() as u64 => {
                Err(Refusal::Defer {
                    until_ms: f.now_ms + RECHECK.as_millis() as u64,
                    why: format!("waiting for a measurement of {what} newer than the request"),
                    effect: None,
                })
            }
            Measured::NotYet { .. } | Measured::NotNeeded => skip(format!(
                "no measurement of {what} newer than the request arrived within {}; not acting on an old one",
                secs(p.measure_wait.as_millis() as u64)
            )),
        }
    };
    let metric = problem.metric.as_deref().unwrap_or("the metric");
    match problem.kind {
        ProblemKind::Died | ProblemKind::OomKilled => {
            if c.down() {
                Ok(())
            } else {
                skip(recovered())
            }
        }
        ProblemKind::Unhealthy => match c.health.as_deref() {
            _ if c.down() => Ok(()),
            Some("unhealthy") => Ok(()),
            Some("starting") => {
                skip("in its health-check start period after a restart: not judged yet".to_owned())
            }
            _ => skip("healthy again".to_owned()),
        },
        ProblemKind::CpuHigh | ProblemKind::MemoryHigh | ProblemKind::Anomaly => {
            if !c.running() {
                return skip(format!(
                    "not running ({}): a {} needs a running container; a death is its own problem",
                    c.status,
                    problem.kind.as_str()
                ));
            }
            measured(metric)
        }
        ProblemKind::Oom => Ok(()),
        ProblemKind::DependencyRestarted => {
            let since = problem
                .since
                .map(|t| t.timestamp_millis().max(0) as u64)
                .unwrap_or(0);
            if c.started_at_ms.is_some_and(|s| s > since) {
                skip("started again after its parent's restart already".to_owned())
            } else {
                Ok(())
            }
        }
        ProblemKind::DiskPressure | ProblemKind::MemoryPressure | ProblemKind::CpuPressure => {
            measured(metric)
        }
    }
}

fn problem(f: &Facts, p: &Policies) -> Option<Refusal> {
    if f.requested_by.is_some() && f.action != Action::Cleanup {
        // A person asked for it: that is the problem. Every other guard still applies.
        return None;
    }
    match &f.target {
        Target::Found(c) => still_holds(f, c, p).err(),
        // A cleanup answers host pressure: it must name it, and it must still be there.
        Target::Host => {
            let Some(pr) = f.problem.as_ref().filter(|pr| {
                matches!(
                    pr.kind,
                    ProblemKind::DiskPressure
                        | ProblemKind::MemoryPressure
                        | ProblemKind::CpuPressure
                )
            }) else {
                return Some(Refusal::Skip(
                    "a cleanup answers host pressure, and this request names none".into(),
                ));
            };
            Some(pr).and_then(|pr| {
                let th = pr.threshold.unwrap_or(0.0);
                let metric = pr.metric.as_deref().unwrap_or("the metric");
                match f.measured {
                    Measured::Value(v) if v >= th => None,
                    Measured::Value(v) => Some(Refusal::Skip(format!(
                        "{metric} is {v:.1} now, under the {th:.1} threshold it crossed"
                    ))),
                    Measured::NotYet { age_ms } if age_ms < p.measure_wait.as_millis() as u64 => {
                        Some(Refusal::Defer {
                            until_ms: f.now_ms + RECHECK.as_millis() as u64,
                            why: format!(
                                "waiting for a measurement of {metric} newer than the request"
                            ),
                            effect: None,
                        })
                    }
                    _ => Some(Refusal::Skip(format!(
                        "no measurement of {metric} newer than the request arrived within {}",
                        secs(p.measure_wait.as_millis() as u64)
                    ))),
                }
            })
        }
        Target::Gone => None,
    }
}

/// A clock time for a report: `HH:MM:SS UTC`.
fn clock(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "later".into())
}

fn maintenance(f: &Facts, _: &Policies) -> Option<Refusal> {
    if f.requested_by.is_some() || f.action == Action::None {
        return None;
    }
    let (what, until) = f.maintenance.as_ref()?;
    Some(Refusal::Defer {
        until_ms: (*until).max(f.now_ms + 1),
        why: format!(
            "maintenance window {what} pauses remediation until {}; acted on then if the problem still holds",
            clock(*until)
        ),
        effect: None,
    })
}

/// Whether an action on a container with `labels` (none: a host-wide action) needs approval.
pub fn needs_approval(labels: Option<&HashMap<String, String>>, approve_all: bool) -> bool {
    match labels
        .and_then(|l| l.get(LABEL_MODE))
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("approve") => true,
        Some("auto") => false,
        _ => approve_all,
    }
}

fn approval(f: &Facts, p: &Policies) -> Option<Refusal> {
    if f.requested_by.is_some() || f.action == Action::None {
        return None;
    }
    if !needs_approval(container(f).map(|c| &c.labels), p.approve_all) {
        return None;
    }
    let recheck = f.now_ms + APPROVAL_RECHECK.as_millis() as u64;
    match &f.approval {
        Approval::Approved(_) => None,
        Approval::Declined(by) => {
            Some(Refusal::Skip(format!("declined by {by}; nothing was done")))
        }
        Approval::Pending { expires_ms } if f.now_ms >= *expires_ms => {
            Some(Refusal::Skip(format!(
                "the proposal expired: nobody approved it within {}; nothing was done",
                secs(p.approval_ttl.as_millis() as u64)
            )))
        }
        Approval::Pending { expires_ms } => Some(Refusal::Defer {
            until_ms: recheck.min(*expires_ms),
            why: format!(
                "waiting for a person to approve (the proposal expires at {})",
                clock(*expires_ms)
            ),
            effect: None,
        }),
        Approval::NotProposed => {
            let expires_ms = f.now_ms + p.approval_ttl.as_millis() as u64;
            Some(Refusal::Defer {
                until_ms: recheck,
                why: format!(
                    "proposed to a person (approve mode); waiting for approval until {}",
                    clock(expires_ms)
                ),
                effect: Some(Effect::Propose { expires_ms }),
            })
        }
    }
}

fn storm(f: &Facts, p: &Policies) -> Option<Refusal> {
    if f.action == Action::None {
        return None;
    }
    let failing = f.failing.len() as u32;
    if !p.storm.holds(failing, f.in_scope) {
        return None;
    }
    let onsets: Vec<u64> = f.failing.iter().map(|(_, t)| *t).collect();
    let recheck = f.now_ms + RECHECK.as_millis() as u64;
    let until = p
        .storm
        .ends_at(&onsets, f.in_scope)
        .map_or(recheck, |end| end.min(recheck).max(f.now_ms + 1));
    let limit = p.storm.limit(f.in_scope);
    let mut names: Vec<String> = f.failing.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    Some(Refusal::Defer {
        until_ms: until,
        why: format!(
            "storm guard: {failing} of {} containers began failing within {} (a storm is {limit} or more); held until it passes",
            f.in_scope,
            secs(p.storm.window.as_millis() as u64)
        ),
        effect: Some(Effect::Storm {
            failing: names,
            limit,
            in_scope: f.in_scope,
        }),
    })
}

fn breaker(f: &Facts, p: &Policies) -> Option<Refusal> {
    if f.breaker_open {
        return Some(Refusal::Reject(
            "circuit breaker open: no more remediations until it closes or is reset".into(),
            None,
        ));
    }
    let since = f.now_ms.saturating_sub(p.breaker.window.as_millis() as u64);
    let in_window = f.history.iter().filter(|t| **t >= since).count() as u32;
    if !p.breaker.trips(in_window) {
        return None;
    }
    let name = container(f).map_or("(cleanup)", |c| c.name.as_str());
    Some(Refusal::Reject(
        format!(
            "circuit breaker opened: {in_window} remediations within {} min; no more until it closes (in {} min) or `hemostat-responder reset-breaker {name}`",
            p.breaker.window.as_secs() / 60,
            p.breaker.cooldown.as_secs() / 60
        ),
        Some(Effect::OpenBreaker { in_window }),
    ))
}

fn backoff(f: &Facts, p: &Policies) -> Option<Refusal> {
    if !matches!(f.action, Action::Restart | Action::Start) {
        return None;
    }
    let wait = p.backoff.wait(&f.history, f.now_ms);
    if wait.is_zero() {
        return None;
    }
    Some(Refusal::Defer {
        until_ms: f.now_ms + wait.as_millis() as u64,
        why: format!(
            "backing off {} (remediation {} of a streak)",
            secs(wait.as_millis() as u64),
            p.backoff.streak(&f.history, f.now_ms) + 1
        ),
        effect: None,
    })
}

fn cooldown(f: &Facts, p: &Policies) -> Option<Refusal> {
    if f.action != Action::Cleanup {
        return None;
    }
    let last = f.last_cleanup_ms?;
    let ago = f.now_ms.saturating_sub(last);
    (ago < p.cleanup_cooldown.as_millis() as u64).then(|| {
        Refusal::Skip(format!(
            "a cleanup ran {} min ago; at most one per {} min (HEMOSTAT_CLEANUP_COOLDOWN)",
            ago / 60_000,
            p.cleanup_cooldown.as_secs() / 60
        ))
    })
}

fn rate_limit(f: &Facts, p: &Policies) -> Option<Refusal> {
    if p.dry_run || f.action == Action::None {
        return None;
    }
    let until = p.writes.next_slot(&f.writes, f.now_ms)?;
    Some(Refusal::Defer {
        until_ms: until,
        why: format!(
            "the host's Docker write budget ({} a minute) is spent; next slot in {}",
            p.writes.per_minute,
            secs(until.saturating_sub(f.now_ms))
        ),
        effect: None,
    })
}

fn lock(f: &Facts, _: &Policies) -> Option<Refusal> {
    let holder = f.lock_holder.as_deref()?;
    (holder != f.job_id).then(|| Refusal::Defer {
        until_ms: f.now_ms + RECHECK.as_millis() as u64,
        why: format!("another request ({holder}) is acting on it right now"),
        effect: None,
    })
}

/// What one look at a container after acting says.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Done and confirmed: running (and healthy, with a health check), or stopped for `stop`.
    Verified {
        healthy: Option<bool>,
        detail: String,
    },
    /// Running but its health check fails: the action did not help.
    Failed(String),
    /// A person took over while hemostat was verifying: their action wins, nothing failed.
    Superseded(String),
    /// Not there yet; look again.
    Pending(String),
}

/// When an action was recorded as begun, and the container's start time just before it: a
/// start time that differs from it is a start since (Docker's clock against Docker's clock,
/// whatever ours says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acted {
    pub at_ms: u64,
    pub started_before_ms: Option<u64>,
}

impl Acted {
    /// Whether the container started since the action began.
    fn started_since(&self, c: &Container) -> bool {
        match (c.started_at_ms, self.started_before_ms) {
            (Some(now), Some(before)) => now != before,
            (Some(now), None) => now >= self.at_ms,
            (None, _) => false,
        }
    }
}

/// Judges one look at the container after `action` was done. `person` is a person's pause, or
/// a `stop` of theirs since the container's last start.
pub fn verify_step(
    action: Action,
    target: &Target,
    acted: Acted,
    person: Option<PersonAction>,
) -> Check {
    let c = match target {
        Target::Found(c) => c,
        Target::Gone => {
            return Check::Superseded(
                "the container was removed while hemostat was verifying its action".into(),
            );
        }
        Target::Host => {
            return Check::Verified {
                healthy: None,
                detail: "done".into(),
            };
        }
    };
    match person {
        Some(PersonAction::Paused) => {
            return Check::Superseded(
                "paused by a person while hemostat was verifying its action; a person's action wins".into(),
            );
        }
        Some(PersonAction::Stopped) => {
            return Check::Superseded(
                "stopped by a person while hemostat was verifying its action; a person's action wins".into(),
            );
        }
        None => {}
    }
    if action == Action::Stop {
        return if c.running() {
            Check::Pending("still running".into())
        } else {
            Check::Verified {
                healthy: None,
                detail: format!("stopped ({})", c.status),
            }
        };
    }
    if !(c.running() && acted.started_since(c)) {
        return Check::Pending(match c.exit_code {
            Some(code) if c.down() => format!("{} (exit code {code})", c.status),
            _ => c.status.clone(),
        });
    }
    match c.health.as_deref() {
        None | Some("none") => Check::Verified {
            healthy: None,
            detail: "running".into(),
        },
        Some("healthy") => Check::Verified {
            healthy: Some(true),
            detail: "running and healthy".into(),
        },
        Some("unhealthy") => Check::Failed("running but its health check fails".into()),
        Some(h) => Check::Pending(format!("running, health {h}")),
    }
}

/// Whether an action recorded as begun reached Docker, judged after its responder died: from
/// the container's start time and Docker's events since the action began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// It happened (or is happening): verify it, never do it again.
    Yes,
    /// Nothing happened since: the write never reached Docker; decide again from scratch.
    No,
}

/// `events` are the actions (`kill`, `die`, `stop`, `start`, `restart`) Docker recorded for the
/// container since the action began.
pub fn reached(action: Action, c: &Target, acted: Acted, events: &[String]) -> Reached {
    let Target::Found(c) = c else {
        // Gone: nothing more can be done to it; verification says so.
        return Reached::Yes;
    };
    let started_since = acted.started_since(c);
    let touched = events
        .iter()
        .any(|e| matches!(e.as_str(), "kill" | "die" | "stop" | "start" | "restart"));
    match action {
        Action::Restart | Action::Start if started_since || touched => Reached::Yes,
        Action::Stop if touched => Reached::Yes,
        Action::Cleanup => Reached::Yes,
        _ => Reached::No,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use chrono::TimeZone;

    const S: u64 = 1000;
    const NOW: u64 = 10_000_000 * S;

    fn policies() -> Policies {
        Policies {
            scope: Scope::default(),
            dry_run: false,
            backoff: BackoffPolicy {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(300),
                reset_after: Duration::from_secs(600),
            },
            breaker: BreakerPolicy {
                threshold: 5,
                window: Duration::from_secs(1800),
                cooldown: Duration::from_secs(3600),
            },
            storm: StormPolicy {
                floor: 3,
                share: 0.3,
                window: Duration::from_secs(60),
            },
            writes: WriteBudget { per_minute: 30 },
            cleanup_cooldown: Duration::from_secs(3600),
            measure_wait: Duration::from_secs(60),
            approve_all: false,
            approval_ttl: Duration::from_secs(900),
        }
    }

    fn crashed() -> Container {
        Container {
            id: "c1".into(),
            name: "web".into(),
            labels: HashMap::from([(scope::LABEL_ENABLE.to_owned(), "true".to_owned())]),
            status: "exited".into(),
            exit_code: Some(1),
            started_at_ms: Some(NOW - 60 * S),
            finished_at_ms: Some(NOW - S),
            ..Container::default()
        }
    }

    fn facts(action: Action, kind: Option<ProblemKind>, c: Container) -> Facts {
        Facts {
            now_ms: NOW,
            job_id: "job".into(),
            action,
            problem: kind.map(Problem::new),
            target: Target::Found(Box::new(c)),
            person: None,
            history: Vec::new(),
            breaker_open: false,
            failing: Vec::new(),
            in_scope: 20,
            writes: Vec::new(),
            last_cleanup_ms: None,
            lock_holder: None,
            measured: Measured::NotNeeded,
            requested_by: None,
            maintenance: None,
            approval: Approval::NotProposed,
        }
    }

    /// What a case is called, its facts, and the deciding guard with its kind of refusal.
    type Case = (&'static str, Facts, Option<(Guard, &'static str)>);

    /// The deciding guard and the kind of refusal, for compact tables.
    fn check(f: &Facts) -> Option<(Guard, &'static str)> {
        judge(f, &policies()).map(|(g, r)| {
            (
                g,
                match r {
                    Refusal::Skip(_) => "skip",
                    Refusal::Reject(..) => "reject",
                    Refusal::Defer { .. } => "defer",
                },
            )
        })
    }

    use Guard as G;
    use ProblemKind as K;

    #[test]
    fn a_fresh_crash_is_acted_on() {
        assert_eq!(
            check(&facts(Action::Restart, Some(K::Died), crashed())),
            None
        );
    }

    #[test]
    fn each_guard_refuses_what_it_should() {
        let running = Container {
            status: "running".into(),
            ..crashed()
        };
        let with = |f: fn(&mut Facts)| {
            let mut x = facts(Action::Restart, Some(K::Died), crashed());
            f(&mut x);
            x
        };
        let cases: Vec<Case> = vec![
            (
                "no action",
                facts(Action::None, Some(K::Died), crashed()),
                Some((G::Request, "skip")),
            ),
            (
                "restart without a container",
                Facts {
                    target: Target::Host,
                    ..facts(Action::Restart, None, crashed())
                },
                Some((G::Request, "reject")),
            ),
            (
                "gone",
                with(|f| f.target = Target::Gone),
                Some((G::Exists, "reject")),
            ),
            (
                "not in scope",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.labels.clear();
                    }
                }),
                Some((G::Scope, "reject")),
            ),
            (
                "protected",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.labels.insert(scope::LABEL_PROTECT.into(), "true".into());
                    }
                }),
                Some((G::Protection, "reject")),
            ),
            (
                "a person stopped it",
                with(|f| f.person = Some(PersonAction::Stopped)),
                Some((G::Person, "skip")),
            ),
            (
                "a person paused it",
                with(|f| f.person = Some(PersonAction::Paused)),
                Some((G::Person, "skip")),
            ),
            (
                "a forged start for a person-stopped container",
                Facts {
                    person: Some(PersonAction::Stopped),
                    ..facts(Action::Start, None, crashed())
                },
                Some((G::Person, "skip")),
            ),
            (
                "Docker is restarting it",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.status = "restarting".into();
                        c.restart_policy = Some("always".into());
                    }
                }),
                Some((G::RestartPolicy, "skip")),
            ),
            (
                "Docker's policy loops",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.restart_policy = Some("always".into());
                        c.restart_count = 7;
                    }
                }),
                Some((G::RestartPolicy, "reject")),
            ),
            (
                "Docker's policy loops, caught while restarting it",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.restart_policy = Some("on-failure".into());
                        c.restart_count = 7;
                        c.status = "restarting".into();
                    }
                }),
                Some((G::RestartPolicy, "reject")),
            ),
            (
                "running again",
                facts(Action::Restart, Some(K::Died), running.clone()),
                Some((G::Problem, "skip")),
            ),
            (
                "no problem named and running",
                facts(Action::Restart, None, running.clone()),
                Some((G::Problem, "skip")),
            ),
            (
                "a storm",
                with(|f| {
                    f.failing = (0..6).map(|i| (format!("c{i}"), NOW - i * S)).collect();
                }),
                Some((G::Storm, "defer")),
            ),
            (
                "breaker open",
                with(|f| f.breaker_open = true),
                Some((G::Breaker, "reject")),
            ),
            (
                "breaker opens",
                with(|f| f.history = (1..=5).map(|i| NOW - i * 100 * S).collect()),
                Some((G::Breaker, "reject")),
            ),
            (
                "backing off",
                with(|f| f.history = vec![NOW - S]),
                Some((G::Backoff, "defer")),
            ),
            (
                "write budget spent",
                with(|f| f.writes = (0..30).map(|i| NOW - i * S).collect()),
                Some((G::RateLimit, "defer")),
            ),
            (
                "locked by another request",
                with(|f| f.lock_holder = Some("other".into())),
                Some((G::Lock, "defer")),
            ),
            (
                "its own lock",
                with(|f| f.lock_holder = Some("job".into())),
                None,
            ),
            (
                "a maintenance window pauses it",
                with(|f| f.maintenance = Some(("nightly backup".into(), NOW + 60 * S))),
                Some((G::Maintenance, "defer")),
            ),
            (
                "a maintenance window, but a person asked",
                with(|f| {
                    f.maintenance = Some(("nightly backup".into(), NOW + 60 * S));
                    f.requested_by = Some("dashboard".into());
                }),
                None,
            ),
            (
                "a person's stop wins over a person's restart now",
                with(|f| {
                    f.person = Some(PersonAction::Stopped);
                    f.requested_by = Some("dashboard".into());
                }),
                Some((G::Person, "skip")),
            ),
            (
                "restart now of a healthy container: a person asked",
                Facts {
                    requested_by: Some("dashboard".into()),
                    ..facts(Action::Restart, None, running.clone())
                },
                None,
            ),
            (
                "restart now still backs off",
                with(|f| {
                    f.requested_by = Some("dashboard".into());
                    f.history = vec![NOW - S];
                }),
                Some((G::Backoff, "defer")),
            ),
            (
                "approve mode: proposed",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.labels.insert(LABEL_MODE.into(), "approve".into());
                    }
                }),
                Some((G::Approval, "defer")),
            ),
            (
                "approve mode: waiting",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.labels.insert(LABEL_MODE.into(), "approve".into());
                    }
                    f.approval = Approval::Pending {
                        expires_ms: NOW + 60 * S,
                    };
                }),
                Some((G::Approval, "defer")),
            ),
            (
                "approve mode: approved",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.labels.insert(LABEL_MODE.into(), "approve".into());
                    }
                    f.approval = Approval::Approved("alice".into());
                }),
                None,
            ),
            (
                "approve mode: declined",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.labels.insert(LABEL_MODE.into(), "approve".into());
                    }
                    f.approval = Approval::Declined("alice".into());
                }),
                Some((G::Approval, "skip")),
            ),
            (
                "approve mode: expired",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.labels.insert(LABEL_MODE.into(), "approve".into());
                    }
                    f.approval = Approval::Pending { expires_ms: NOW };
                }),
                Some((G::Approval, "skip")),
            ),
            (
                "approve mode: a recovered container is not proposed",
                Facts {
                    approval: Approval::Pending {
                        expires_ms: NOW + 60 * S,
                    },
                    ..facts(
                        Action::Restart,
                        Some(K::Died),
                        Container {
                            labels: HashMap::from([
                                (scope::LABEL_ENABLE.to_owned(), "true".to_owned()),
                                (LABEL_MODE.to_owned(), "approve".to_owned()),
                            ]),
                            ..running.clone()
                        },
                    )
                },
                Some((G::Problem, "skip")),
            ),
            (
                "approve mode: breaker still wins after approval",
                with(|f| {
                    if let Target::Found(c) = &mut f.target {
                        c.labels.insert(LABEL_MODE.into(), "approve".into());
                    }
                    f.approval = Approval::Approved("alice".into());
                    f.breaker_open = true;
                }),
                Some((G::Breaker, "reject")),
            ),
        ];
        for (what, f, want) in cases {
            assert_eq!(check(&f), want, "{what}");
        }
    }

    #[test]
    fn approval_is_per_container_or_global() {
        let l = |v: &str| HashMap::from([(LABEL_MODE.to_owned(), v.to_owned())]);
        type Labels = Option<HashMap<String, String>>;
        let cases: &[(Labels, bool, bool)] = &[
            (None, false, false),
            (None, true, true),
            (Some(l("approve")), false, true),
            (Some(l("APPROVE ")), false, true),
            (Some(l("auto")), true, false),
            (Some(l("whatever")), true, true),
            (Some(HashMap::new()), false, false),
        ];
        for (labels, global, want) in cases {
            assert_eq!(
                needs_approval(labels.as_ref(), *global),
                *want,
                "{labels:?} {global}"
            );
        }
        let records: &[(Option<u64>, Option<&str>, Approval)] = &[
            (None, None, Approval::NotProposed),
            (None, Some("approved:alice"), Approval::NotProposed),
            (Some(5), None, Approval::Pending { expires_ms: 5 }),
            (
                Some(5),
                Some("approved:alice"),
                Approval::Approved("alice".into()),
            ),
            (
                Some(5),
                Some("declined:bob:x"),
                Approval::Declined("bob:x".into()),
            ),
            (
                Some(5),
                Some("garbage"),
                Approval::Pending { expires_ms: 5 },
            ),
        ];
        for (exp, dec, want) in records {
            assert_eq!(Approval::from_records(*exp, *dec), *want, "{exp:?} {dec:?}");
        }
    }

    #[test]
    fn each_problem_must_still_hold() {
        let c = |status: &str, health: Option<&str>| Container {
            status: status.into(),
            health: health.map(str::to_owned),
            ..crashed()
        };
        let problem = |kind, measured| Facts {
            measured,
            problem: Some(Problem {
                metric: Some("memory_percent".into()),
                threshold: Some(80.0),
                since: Some(
                    chrono::Utc
                        .timestamp_millis_opt((NOW - 30 * S) as i64)
                        .unwrap(),
                ),
                ..Problem::new(kind)
            }),
            ..facts(Action::Restart, Some(kind), c("running", None))
        };
        let with_c = |mut f: Facts, c: Container| {
            f.target = Target::Found(Box::new(c));
            f
        };
        let holds: Vec<Case> = vec![
            (
                "died, down",
                facts(Action::Restart, Some(K::Died), c("exited", None)),
                None,
            ),
            (
                "died, running",
                facts(Action::Restart, Some(K::Died), c("running", None)),
                Some((G::Problem, "skip")),
            ),
            (
                "oom killed, down",
                facts(Action::Restart, Some(K::OomKilled), c("exited", None)),
                None,
            ),
            (
                "unhealthy, unhealthy",
                facts(
                    Action::Restart,
                    Some(K::Unhealthy),
                    c("running", Some("unhealthy")),
                ),
                None,
            ),
            (
                "unhealthy, healthy",
                facts(
                    Action::Restart,
                    Some(K::Unhealthy),
                    c("running", Some("healthy")),
                ),
                Some((G::Problem, "skip")),
            ),
            (
                "unhealthy, starting",
                facts(
                    Action::Restart,
                    Some(K::Unhealthy),
                    c("running", Some("starting")),
                ),
                Some((G::Problem, "skip")),
            ),
            (
                "unhealthy, then died",
                facts(Action::Restart, Some(K::Unhealthy), c("exited", None)),
                None,
            ),
            (
                "memory still over",
                problem(K::MemoryHigh, Measured::Value(91.0)),
                None,
            ),
            (
                "memory back under",
                problem(K::MemoryHigh, Measured::Value(42.0)),
                Some((G::Problem, "skip")),
            ),
            (
                "memory: no fresh sample yet",
                problem(K::MemoryHigh, Measured::NotYet { age_ms: 5 * S }),
                Some((G::Problem, "defer")),
            ),
            (
                "memory: no fresh sample in time",
                problem(K::MemoryHigh, Measured::NotYet { age_ms: 61 * S }),
                Some((G::Problem, "skip")),
            ),
            (
                "memory high but it died",
                with_c(
                    problem(K::MemoryHigh, Measured::Value(91.0)),
                    c("exited", None),
                ),
                Some((G::Problem, "skip")),
            ),
            (
                "dependent not restarted since its parent",
                with_c(
                    problem(K::DependencyRestarted, Measured::NotNeeded),
                    Container {
                        started_at_ms: Some(NOW - 60 * S),
                        ..c("running", None)
                    },
                ),
                None,
            ),
            (
                "dependent restarted since its parent",
                with_c(
                    problem(K::DependencyRestarted, Measured::NotNeeded),
                    Container {
                        started_at_ms: Some(NOW - 10 * S),
                        ..c("running", None)
                    },
                ),
                Some((G::Problem, "skip")),
            ),
            (
                "start of a running container",
                facts(Action::Start, None, c("running", None)),
                Some((G::Problem, "skip")),
            ),
            (
                "stop of a stopped container",
                facts(Action::Stop, Some(K::CpuHigh), c("exited", None)),
                Some((G::Problem, "skip")),
            ),
        ];
        for (what, f, want) in holds {
            assert_eq!(check(&f), want, "{what}");
        }
    }

    #[test]
    fn docker_restart_policy_recovery_is_named() {
        let c = Container {
            status: "running".into(),
            restart_policy: Some("always".into()),
            restart_count: 1,
            ..crashed()
        };
        let (g, r) = judge(&facts(Action::Restart, Some(K::Died), c), &policies()).unwrap();
        assert_eq!(g, G::Problem);
        assert_eq!(
            r,
            Refusal::Skip("running again: recovered by Docker's restart policy".into())
        );
    }

    #[test]
    fn a_policy_loop_long_ago_is_not_a_loop() {
        let c = Container {
            restart_policy: Some("on-failure".into()),
            restart_count: 9,
            finished_at_ms: Some(NOW - 7 * 24 * 3600 * S),
            ..crashed()
        };
        assert_eq!(check(&facts(Action::Restart, Some(K::Died), c)), None);
    }

    #[test]
    fn cleanup_needs_lasting_pressure_and_a_cooldown() {
        let host = |measured, last| Facts {
            target: Target::Host,
            measured,
            last_cleanup_ms: last,
            problem: Some(Problem {
                metric: Some("disk_percent".into()),
                threshold: Some(90.0),
                ..Problem::new(K::DiskPressure)
            }),
            ..facts(Action::Cleanup, None, crashed())
        };
        let cases = [
            ("pressure holds", host(Measured::Value(95.0), None), None),
            (
                "pressure gone",
                host(Measured::Value(70.0), None),
                Some((G::Problem, "skip")),
            ),
            (
                "waiting for a sample",
                host(Measured::NotYet { age_ms: S }, None),
                Some((G::Problem, "defer")),
            ),
            (
                "ran 10 minutes ago",
                host(Measured::Value(95.0), Some(NOW - 600 * S)),
                Some((G::Cooldown, "skip")),
            ),
            (
                "ran 2 hours ago",
                host(Measured::Value(95.0), Some(NOW - 7200 * S)),
                None,
            ),
            (
                "names no pressure",
                Facts {
                    problem: None,
                    ..host(Measured::Value(95.0), None)
                },
                Some((G::Problem, "skip")),
            ),
        ];
        for (what, f, want) in cases {
            assert_eq!(check(&f), want, "{what}");
        }
    }

    #[test]
    fn a_storm_holds_until_its_failures_age_out() {
        let mut f = facts(Action::Restart, Some(K::Died), crashed());
        f.failing = (0..6).map(|i| (format!("c{i}"), NOW - i * S)).collect();
        let Some((
            G::Storm,
            Refusal::Defer {
                until_ms, effect, ..
            },
        )) = judge(&f, &policies())
        else {
            panic!("a storm")
        };
        assert!(until_ms > NOW && until_ms <= NOW + RECHECK.as_millis() as u64);
        assert_eq!(
            effect,
            Some(Effect::Storm {
                failing: (0..6).map(|i| format!("c{i}")).collect(),
                limit: 6,
                in_scope: 20
            })
        );
        // Five failing among twenty is not a storm.
        f.failing.truncate(5);
        assert_eq!(check(&f), None);
    }

    #[test]
    fn dry_run_spends_no_write_budget() {
        let mut f = facts(Action::Restart, Some(K::Died), crashed());
        f.writes = (0..30).map(|i| NOW - i * S).collect();
        let mut p = policies();
        p.dry_run = true;
        assert_eq!(judge(&f, &p), None);
    }

    #[test]
    fn verification_looks() {
        let acted = NOW - 5 * S;
        let c = |status: &str, health: Option<&str>, started: u64| {
            Target::Found(Box::new(Container {
                status: status.into(),
                health: health.map(str::to_owned),
                started_at_ms: Some(started),
                ..crashed()
            }))
        };
        let kind = |x: Check| match x {
            Check::Verified { .. } => "verified",
            Check::Failed(_) => "failed",
            Check::Superseded(_) => "superseded",
            Check::Pending(_) => "pending",
        };
        let cases = [
            (
                "running since",
                Action::Restart,
                c("running", None, acted + S),
                None,
                "verified",
            ),
            (
                "running from before",
                Action::Restart,
                c("running", None, acted - 60 * S),
                None,
                "pending",
            ),
            (
                "healthy",
                Action::Restart,
                c("running", Some("healthy"), acted),
                None,
                "verified",
            ),
            (
                "starting",
                Action::Restart,
                c("running", Some("starting"), acted),
                None,
                "pending",
            ),
            (
                "unhealthy",
                Action::Restart,
                c("running", Some("unhealthy"), acted),
                None,
                "failed",
            ),
            (
                "died again",
                Action::Restart,
                c("exited", None, acted),
                None,
                "pending",
            ),
            (
                "a person stopped it",
                Action::Restart,
                c("exited", None, acted),
                Some(PersonAction::Stopped),
                "superseded",
            ),
            (
                "a person paused it",
                Action::Restart,
                c("paused", None, acted),
                Some(PersonAction::Paused),
                "superseded",
            ),
            ("removed", Action::Restart, Target::Gone, None, "superseded"),
            (
                "stopped",
                Action::Stop,
                c("exited", None, acted - 60 * S),
                None,
                "verified",
            ),
        ];
        let acted = Acted {
            at_ms: acted,
            started_before_ms: Some(acted - 60 * S),
        };
        for (what, action, target, person, want) in cases {
            assert_eq!(
                kind(verify_step(action, &target, acted, person)),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn whether_a_write_reached_docker() {
        let acted = NOW - 20 * S;
        let c = |started: u64| {
            Target::Found(Box::new(Container {
                started_at_ms: Some(started),
                ..crashed()
            }))
        };
        let ev = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            (
                "started since",
                Action::Restart,
                c(acted + S),
                ev(&[]),
                Reached::Yes,
            ),
            (
                "a kill since",
                Action::Restart,
                c(acted - 60 * S),
                ev(&["kill"]),
                Reached::Yes,
            ),
            (
                "nothing since",
                Action::Restart,
                c(acted - 60 * S),
                ev(&[]),
                Reached::No,
            ),
            (
                "stop, nothing",
                Action::Stop,
                c(acted - 60 * S),
                ev(&[]),
                Reached::No,
            ),
            (
                "stop, died",
                Action::Stop,
                c(acted - 60 * S),
                ev(&["die"]),
                Reached::Yes,
            ),
        ];
        let acted = Acted {
            at_ms: acted,
            started_before_ms: Some(acted - 60 * S),
        };
        for (what, action, target, events, want) in cases {
            assert_eq!(reached(action, &target, acted, &events), want, "{what}");
        }
        // Started a moment before the action began, and not since: not reached, whatever
        // the clocks say.
        let just_before = Acted {
            at_ms: acted.at_ms,
            started_before_ms: Some(acted.at_ms - 200),
        };
        assert_eq!(
            reached(Action::Restart, &c(acted.at_ms - 200), just_before, &[]),
            Reached::No
        );
    }

    #[test]
    fn the_table_is_in_the_documented_order() {
        let order: Vec<Guard> = TABLE.iter().map(|r| r.guard).collect();
        assert_eq!(
            order,
            [
                G::Request,
                G::Exists,
                G::Scope,
                G::Protection,
                G::Person,
                G::RestartPolicy,
                G::Problem,
                G::Maintenance,
                G::Storm,
                G::Breaker,
                G::Backoff,
                G::Cooldown,
                G::RateLimit,
                G::Approval,
                G::Lock
            ]
        );
    }
}
