//! hemostat-responder: the only component that writes to Docker.
//!
//! Every `remediation_needed` addressed to its host becomes a job in the host's queue in Redis
//! ([`queue`]); the stream entry is acked once the job is recorded. A scheduler claims jobs as
//! they fall due and runs one short *step* per claim, never a wait:
//!
//! - **judge** (`queued`): gather fresh facts (inspect, Docker's history, the queue's state, the
//!   monitor's newest measurement), run the guard table ([`guards`]), then report a refusal,
//!   put the job back with a due time (backoff, storm, rate limit, lock), or act;
//! - **act**: record the intent (lock, write budget, history) atomically, make the one Docker
//!   call, move to `verifying` and take the first look;
//! - **look** (`verifying`): one inspect; report success, failure or `superseded` (a person
//!   took over), or put the job back for the next look;
//! - **resume** (`acting`, found after a crash): decide from Docker itself whether the write
//!   reached it; verify it if so, judge again if not. A write is never made twice.
//!
//! A job leaves the queue only in the atomic step that publishes its report to
//! `hemostat:remediation_complete` and the audit stream, releases its lock and queues its
//! dependents. A SIGTERM hands the jobs in hand back; after a SIGKILL their leases lapse and a
//! peer or a successor takes them over from their recorded phase.

pub mod config;
pub mod docker_ops;
pub mod fleet;
pub mod guards;
pub mod policy;
pub mod queue;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use chrono::{TimeZone, Utc};
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::{Backoff, Bus, ConsumerConfig, Disposition, Op, RecentWindow, consume};
use hemostat_common::events::proposals;
use hemostat_common::events::{
    AUDIT_STREAM, Action, AnalysisMethod, Channel, ContainerRef, Envelope, Escalation,
    EscalationKind, Guard, Outcome, Payload, Problem, ProblemKind, RemediationRequest,
    RemediationResult, Severity, Verification,
};
use hemostat_common::maintenance;
use hemostat_common::shutdown::Shutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::config::ResponderConfig;
use crate::guards::{
    Check, Effect, Facts, Measured, PersonAction, Policies, Reached, Refusal, Target, verb,
};
use crate::policy::WriteBudget;
pub use crate::queue::keys;
use crate::queue::{Admitted, Intent, Job, Phase, Queue};

/// The agent's name on the bus.
pub const AGENT: &str = "responder";

/// How long "already handled" markers live.
const HANDLED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest the scheduler sleeps without looking at the queue (peers admit jobs too, and
/// leases of dead peers fall due).
const POLL: Duration = Duration::from_secs(1);

/// How long one listing of the host's containers serves the storm guard.
const LISTING_TTL: Duration = Duration::from_secs(1);

/// How long a threshold request waits for a measurement newer than itself.
const MEASURE_WAIT: Duration = Duration::from_secs(60);

/// How long a storm holds before its escalation goes out, so that it names every container
/// that one fault took down, not only the first to be judged.
const STORM_SETTLE: Duration = Duration::from_secs(2);

/// Label set for action counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
    pub outcome: String,
}

/// Label set for waits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabel {
    pub guard: String,
}

#[derive(Clone, Debug, Default)]
pub struct ResponderMetrics {
    pub decisions: Family<ActionLabel, Counter>,
    pub escalations: Counter,
    pub ignored_other_host: Counter,
    /// Times a request was put back to wait, by the guard that held it.
    pub deferred: Family<GuardLabel, Counter>,
    /// Requests in the host's queue at the last look.
    pub queued: Gauge,
}

/// A point in a request's handling where a test can freeze the responder, as a SIGKILL would
/// stop it, to prove what a successor does from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// The intent is recorded; the Docker call has not been made.
    BeforeDockerWrite,
    /// The Docker call returned; nothing else is recorded yet.
    AfterDockerWrite,
    /// The outcome is known; the report is not written yet.
    BeforeReport,
}

/// Returns true to freeze the step at that point forever.
pub type FaultHook = Arc<dyn Fn(Point, &Job) -> bool + Send + Sync>;

/// A listing of the host's containers: names, labels, and whether each is in trouble.
#[derive(Debug, Default)]
struct Listing {
    in_scope: u32,
    /// Every in-scope container's name.
    names: HashSet<String>,
    /// In-scope containers that are down, restarting or unhealthy.
    troubled: HashSet<String>,
}

/// One decision, ready to report.
#[derive(Debug)]
struct Report {
    outcome: Outcome,
    reason: String,
    guard: Option<Guard>,
    verification: Option<Verification>,
    escalation: Option<Escalation>,
    /// Requests to queue with the report (dependents restarted after their parent).
    follow_ups: Vec<Envelope>,
}

impl Report {
    fn new(outcome: Outcome, reason: impl Into<String>) -> Report {
        Report {
            outcome,
            reason: reason.into(),
            guard: None,
            verification: None,
            escalation: None,
            follow_ups: Vec::new(),
        }
    }

    fn refused(outcome: Outcome, guard: Guard, reason: impl Into<String>) -> Report {
        Report {
            guard: Some(guard),
            ..Report::new(outcome, reason)
        }
    }
}

pub struct Responder {
    cfg: ResponderConfig,
    policies: Policies,
    docker: Docker,
    bus: Bus,
    queue: Queue,
    host: String,
    shutdown: Shutdown,
    /// Wakes the scheduler early: a job was admitted.
    wake: Notify,
    /// Jobs this process holds a lease on right now.
    owned: Mutex<HashSet<String>>,
    /// Recent health alerts: where a person's stop is remembered.
    recent_alerts: RecentWindow,
    /// Recent samples: the fresh measurement a threshold request needs.
    recent_metrics: RecentWindow,
    listing: tokio::sync::Mutex<Option<(Instant, Arc<Listing>)>>,
    faults: Option<FaultHook>,
    pub metrics: ResponderMetrics,
    /// What it did to each container, for Prometheus.
    pub fleet: fleet::Fleet,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("host", &self.host)
            .field("dry_run", &self.cfg.dry_run)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

fn ms_to_time(ms: u64) -> Option<chrono::DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms as i64).single()
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

impl Responder {
    pub fn new(
        cfg: ResponderConfig,
        docker: Docker,
        bus: Bus,
        host: &str,
        instance: &str,
        shutdown: Shutdown,
    ) -> Responder {
        let policies = Policies {
            scope: cfg.scope.clone(),
            dry_run: cfg.dry_run,
            backoff: cfg.backoff,
            breaker: cfg.breaker,
            storm: cfg.storm,
            writes: WriteBudget {
                per_minute: cfg.docker_write_rate.max(1),
            },
            cleanup_cooldown: cfg.cleanup_cooldown,
            measure_wait: MEASURE_WAIT,
            approve_all: cfg.mode == crate::config::Mode::Approve,
            approval_ttl: cfg.approval_ttl,
        };
        Responder {
            queue: Queue::new(bus.clone(), host, instance, cfg.lease),
            policies,
            cfg,
            docker,
            bus,
            host: host.to_owned(),
            shutdown,
            wake: Notify::new(),
            owned: Mutex::default(),
            recent_alerts: RecentWindow::new(Channel::HealthAlert, 2000),
            recent_metrics: RecentWindow::new(Channel::Metrics, 120),
            listing: tokio::sync::Mutex::new(None),
            faults: None,
            metrics: ResponderMetrics::default(),
            fleet: fleet::Fleet::new(host),
        }
    }

    /// Installs a test's fault hook (see [`Point`]).
    pub fn with_fault_hook(mut self, hook: FaultHook) -> Responder {
        self.faults = Some(hook);
        self
    }

    fn register(&self, ctx: &AgentContext) {
        ctx.registry.with(|r| {
            r.register(
                "hemostat_responder_decisions",
                "Remediation decisions by action and outcome",
                self.metrics.decisions.clone(),
            );
            r.register(
                "hemostat_responder_escalations",
                "Escalations sent to hemostat:alerts",
                self.metrics.escalations.clone(),
            );
            r.register(
                "hemostat_responder_ignored_other_host",
                "Requests addressed to another Docker host",
                self.metrics.ignored_other_host.clone(),
            );
            r.register(
                "hemostat_responder_deferred",
                "Times a request was put back to wait, by the guard that held it",
                self.metrics.deferred.clone(),
            );
            r.register(
                "hemostat_responder_queued",
                "Requests in the host's remediation queue",
                self.metrics.queued.clone(),
            );
            self.fleet.register(r);
        });
    }

    fn history_horizon(&self) -> Duration {
        self.cfg
            .breaker
            .window
            .max(self.cfg.backoff.reset_after * 4)
    }

    async fn fault(&self, point: Point, job: &Job) {
        if let Some(hook) = &self.faults
            && hook(point, job)
        {
            tracing::warn!(?point, request = %job.id, "frozen by a fault hook");
            std::future::pending::<()>().await;
        }
    }

    // ---- intake -------------------------------------------------------------------------

    /// Takes one `remediation_needed` envelope off the stream into the host's queue.
    pub async fn admit(&self, env: Envelope) -> Disposition {
        // A person's request ("restart now") is queued as a request of its own, marked as
        // theirs: it needs no problem and no approval, and passes every other guard.
        let env = match env.payload {
            Payload::PersonRequest(mut req) => {
                req.analysis_method = AnalysisMethod::Person;
                if req.requested_by.as_deref().is_none_or(str::is_empty) {
                    req.requested_by = Some("a person".into());
                }
                Envelope {
                    payload: Payload::RemediationNeeded(req),
                    ..env
                }
            }
            _ => env,
        };
        let Payload::RemediationNeeded(req) = &env.payload else {
            return Disposition::Ack;
        };
        if req.target_host != self.host {
            self.metrics.ignored_other_host.inc();
            tracing::debug!(target_host = %req.target_host, "request for another host; ignored");
            return Disposition::Ack;
        }
        match self
            .queue
            .admit(&env, req, now_ms(), self.cfg.queue_max)
            .await
        {
            Ok(Admitted::New) => {
                tracing::debug!(request = %env.id, "queued");
                self.wake.notify_one();
                Disposition::Ack
            }
            Ok(Admitted::Known) => Disposition::Ack,
            Ok(Admitted::Full) => Disposition::Retry(format!(
                "the host's remediation queue holds {} requests (HEMOSTAT_RESPONDER_QUEUE_MAX)",
                self.cfg.queue_max
            )),
            Err(e) => Disposition::Retry(format!("cannot queue the request: {e}")),
        }
    }

    // ---- scheduling -----------------------------------------------------------------------

    /// Claims due jobs into free slots and runs one step of each, until shutdown; then lets the
    /// steps in hand finish and hands back whatever is still ours.
    async fn schedule(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_gauge = Instant::now() - Duration::from_secs(60);
        loop {
            while let Some(done) = tasks.try_join_next() {
                reap(done);
            }
            if self.shutdown.is_cancelled() {
                break;
            }
            let free = self.cfg.concurrency.saturating_sub(tasks.len());
            let mut sleep = POLL;
            if free > 0 {
                match self.queue.claim(free, now_ms()).await {
                    Ok((jobs, broken)) => {
                        backoff.reset();
                        for b in broken {
                            self.drop_broken(&b).await;
                        }
                        let claimed = jobs.len();
                        for job in jobs {
                            self.own(&job.id);
                            tasks.spawn(self.clone().run(job));
                        }
                        if claimed == free {
                            // More may be due: claim again as soon as a slot frees.
                            continue;
                        }
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot claim from the remediation queue");
                        sleep = delay;
                    }
                }
                if sleep == POLL {
                    let now = now_ms();
                    sleep = match self.queue.next_due().await {
                        Ok(Some(due)) if due > now => Duration::from_millis(due - now).min(POLL),
                        // Due, but taken by a peer meanwhile: look again shortly.
                        Ok(Some(_)) => Duration::from_millis(20),
                        Ok(None) | Err(_) => POLL,
                    };
                }
                if last_gauge.elapsed() >= Duration::from_secs(5) {
                    last_gauge = Instant::now();
                    if let Ok(n) = self.queue.depth().await {
                        self.metrics.queued.set(n as i64);
                    }
                }
            }
            tokio::select! {
                // Stop claiming; the steps in hand finish below.
                () = self.shutdown.cancelled() => {}
                // A request was admitted here.
                () = self.wake.notified() => {}
                // A slot is free again.
                Some(done) = tasks.join_next(), if !tasks.is_empty() => reap(done),
                // The next job falls due (or it is time to look for peers' and lapsed ones).
                () = tokio::time::sleep(sleep), if free > 0 => {}
            }
        }
        while let Some(done) = tasks.join_next().await {
            reap(done);
        }
        let left: Vec<String> = self.owned_ids();
        if !left.is_empty() {
            match self.queue.release(&left, now_ms()).await {
                Ok(()) => tracing::info!(count = left.len(), "handed requests back at shutdown"),
                Err(e) => {
                    tracing::warn!(error = %e, count = left.len(), "could not hand requests back; their leases lapse")
                }
            }
        }
    }

    /// Keeps the leases of the jobs in hand alive (and the locks they hold) while steps run.
    async fn renew_leases(self: Arc<Self>) {
        let every = (self.cfg.lease / 3).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let ids = self.owned_ids();
            if let Err(e) = self.queue.renew(&ids, now_ms()).await {
                tracing::warn!(error = %e, "could not renew leases");
            }
        }
    }

    fn own(&self, id: &str) {
        let mut o = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        o.insert(id.to_owned());
    }

    fn disown(&self, id: &str) {
        let mut o = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        o.remove(id);
    }

    fn owned_ids(&self) -> Vec<String> {
        let o = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        o.iter().cloned().collect()
    }

    /// Dead-letters a job that must not run again (with its request, so nothing is lost),
    /// then takes it out of the queue; if the dead letter cannot be written, the job stays.
    async fn drop_broken(&self, b: &queue::Broken) {
        tracing::error!(job = %b.id, why = %b.why, "dead-lettering a remediation request");
        let r = match self
            .bus
            .dead_letter(
                &keys::jobs(&self.host),
                None,
                Some(&b.id),
                &b.why,
                &b.request,
            )
            .await
        {
            Ok(()) => self.queue.drop_broken(&b.id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, job = %b.id, "could not dead-letter a broken job; it stays queued");
        }
    }

    /// Runs one step of a claimed job. A step that fails (Redis or Docker away) is put back
    /// to be tried again shortly; if even that fails, its lease lapses and it is taken over.
    async fn run(self: Arc<Self>, job: Job) {
        use futures::FutureExt as _;
        let id = job.id.clone();
        match std::panic::AssertUnwindSafe(self.step(&job))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = format!("{e:#}"), request = %id, "step failed; trying again shortly");
                let _ = self
                    .queue
                    .defer(&job, now_ms() + 2_000, job.phase, None, None, now_ms())
                    .await;
            }
            // Not handed back: the lease lapses, the next claim counts it, and a request whose
            // steps keep panicking is dead-lettered (`queue::MAX_LAPSES`).
            Err(_) => tracing::error!(
                request = %id,
                "a remediation step panicked; the request is taken over when its lease lapses"
            ),
        }
        self.disown(&id);
    }

    async fn step(&self, job: &Job) -> anyhow::Result<()> {
        let mut conn = self.bus.connection();
        let reported: bool = redis::cmd("EXISTS")
            .arg(keys::handled(&self.host, &job.id))
            .query_async(&mut conn)
            .await?;
        if reported {
            self.queue.forget(job).await?;
            return Ok(());
        }
        match job.phase {
            Phase::Queued => self.judge(job).await,
            Phase::Acting => self.resume(job).await,
            Phase::Verifying => self.look(job).await,
        }
    }

    // ---- judging --------------------------------------------------------------------------

    #[tracing::instrument(skip_all, fields(request = %job.id, container = job.name(), action = ?job.req.action))]
    async fn judge(&self, job: &Job) -> anyhow::Result<()> {
        let (facts, inspect) = self.gather(job).await?;
        let Some((guard, refusal)) = guards::judge(&facts, &self.policies) else {
            return self.act(job, &facts, inspect.as_ref()).await;
        };
        match refusal {
            Refusal::Skip(why) => {
                self.report(job, Report::refused(Outcome::Skipped, guard, why))
                    .await
            }
            Refusal::Reject(why, effect) => {
                let mut r = Report::refused(Outcome::Rejected, guard, why);
                match effect {
                    Some(Effect::EscalateProtected) => {
                        r.escalation = Some(Escalation {
                            proposal: None,
                            kind: EscalationKind::ProtectedContainer,
                            severity: Severity::Critical,
                            container: job.req.container.clone(),
                            summary: format!(
                                "protected container {} needs attention: {}",
                                job.name(),
                                job.req.root_cause
                            ),
                            detail: format!(
                                "hemostat would have run {} but the container is protected; a person must act",
                                verb(job.req.action)
                            ),
                        });
                    }
                    Some(Effect::OpenBreaker { in_window }) => {
                        self.open_breaker(job, in_window).await?;
                    }
                    Some(Effect::PolicyLoop { restarts }) => {
                        self.policy_loop(job, restarts).await?;
                    }
                    Some(Effect::Storm { .. } | Effect::Propose { .. }) | None => {}
                }
                self.report(job, r).await
            }
            Refusal::Defer {
                until_ms,
                why,
                effect,
            } => {
                match effect {
                    Some(Effect::Storm {
                        failing,
                        limit,
                        in_scope,
                    }) => self.storm(&failing, limit, in_scope).await?,
                    Some(Effect::Propose { expires_ms }) => self.propose(job, expires_ms).await?,
                    _ => {}
                }
                self.metrics
                    .deferred
                    .get_or_create(&GuardLabel {
                        guard: guard.as_str().to_owned(),
                    })
                    .inc();
                let again = job
                    .waiting
                    .as_ref()
                    .is_some_and(|(g, _)| g == guard.as_str());
                if again {
                    tracing::debug!(guard = guard.as_str(), %why, "still waiting");
                } else {
                    tracing::info!(guard = guard.as_str(), %why, until = ?ms_to_time(until_ms), "waiting");
                }
                self.queue
                    .defer(
                        job,
                        until_ms,
                        Phase::Queued,
                        Some((guard, &why)),
                        None,
                        now_ms(),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// Inspects the request's container: by id, or by name if it was recreated.
    async fn target(&self, job: &Job) -> (Target, Option<ContainerInspectResponse>) {
        let Some(c) = &job.req.container else {
            return (Target::Host, None);
        };
        let inspected = match docker_ops::inspect(&self.docker, &c.id).await {
            Ok(i) => Ok(i),
            Err(_) => docker_ops::inspect(&self.docker, &c.name).await,
        };
        match inspected {
            Ok(i) => (
                Target::Found(Box::new(docker_ops::container_facts(&i))),
                Some(i),
            ),
            Err(_) => (Target::Gone, None),
        }
    }

    /// Everything the guards look at, gathered fresh.
    async fn gather(&self, job: &Job) -> anyhow::Result<(Facts, Option<ContainerInspectResponse>)> {
        let now = now_ms();
        let (target, inspect) = self.target(job).await;
        let person = match (&target, &inspect) {
            (Target::Found(c), Some(i)) => self.person(c, i).await,
            _ => None,
        };
        let name = job.name();
        let storm_since = now.saturating_sub(self.cfg.storm.window.as_millis() as u64);
        let history_since = now.saturating_sub(self.history_horizon().as_millis() as u64);
        let mut conn = self.bus.connection();
        type Scored = Vec<(String, f64)>;
        let (history, breaker_open, failing, writes, last_cleanup, lock_holder): (
            Scored,
            bool,
            Scored,
            Scored,
            Option<u64>,
            Option<String>,
        ) = redis::pipe()
            .cmd("ZRANGE")
            .arg(keys::history(&self.host, name))
            .arg(history_since)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES")
            .cmd("EXISTS")
            .arg(keys::breaker(&self.host, name))
            .cmd("ZRANGE")
            .arg(keys::failing(&self.host))
            .arg(storm_since)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES")
            .cmd("ZRANGE")
            .arg(keys::writes(&self.host))
            .arg(now.saturating_sub(WriteBudget::WINDOW_MS))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES")
            .cmd("GET")
            .arg(keys::cleanup(&self.host))
            .cmd("GET")
            .arg(keys::lock(&self.host, name))
            .query_async(&mut conn)
            .await?;
        let times = |v: Scored| -> Vec<u64> {
            let mut t: Vec<u64> = v.into_iter().map(|(_, s)| s.max(0.0) as u64).collect();
            t.sort_unstable();
            t
        };
        // Who is failing now, and since when. The monitor's alerts say it first and best: a
        // death is reported before the analyzer's verdict reaches us (so the first request of a
        // burst already sees the whole burst), and a recovery as soon as the container starts
        // again; Docker's own listing lags a death by its teardown (tens of ms). A container
        // with an open request and no alert in the window (a request written by hand) counts
        // if the listing shows it down, restarting or unhealthy.
        let alerted = self.alerted_state(storm_since).await;
        let mut began: std::collections::HashMap<String, u64> = alerted
            .iter()
            .filter_map(|(n, onset)| onset.map(|t| (n.clone(), t)))
            .collect();
        let unalerted: Vec<(String, u64)> = failing
            .into_iter()
            .filter(|(n, _)| !alerted.contains_key(n))
            .map(|(n, s)| (n, s.max(0.0) as u64))
            .collect();
        // Nothing can be a storm below the floor: only then is the host's listing needed (a
        // container removed since its alert is not failing, it is gone).
        let in_scope = if (began.len() + unalerted.len()) as u32 >= self.cfg.storm.floor {
            let listing = self.listing().await;
            began.retain(|n, _| listing.names.contains(n));
            for (n, t) in unalerted {
                if listing.troubled.contains(&n) {
                    began.insert(n, t);
                }
            }
            listing.in_scope
        } else {
            0
        };
        let failing: Vec<(String, u64)> = began.into_iter().collect();
        tracing::debug!(failing = failing.len(), in_scope, "storm facts");
        let measured = self.measured(job, &target, now).await;
        let (windows, proposal_expires, decision): (
            std::collections::HashMap<String, String>,
            Option<u64>,
            Option<String>,
        ) = redis::pipe()
            .cmd("HGETALL")
            .arg(maintenance::MAINTENANCE_KEY)
            .cmd("HGET")
            .arg(proposals::proposal(&self.host, &job.id))
            .arg("expires_ms")
            .cmd("GET")
            .arg(proposals::decision(&self.host, &job.id))
            .query_async(&mut conn)
            .await?;
        let maintenance = self.paused_by(&windows, &target, now);
        let facts = Facts {
            now_ms: now,
            job_id: job.id.clone(),
            action: job.req.action,
            problem: job.req.problem.clone(),
            target,
            person,
            history: times(history),
            breaker_open,
            failing,
            in_scope,
            writes: times(writes),
            last_cleanup_ms: last_cleanup,
            lock_holder,
            measured,
            requested_by: job.req.requested_by.clone(),
            maintenance,
            approval: guards::Approval::from_records(proposal_expires, decision.as_deref()),
        };
        Ok((facts, inspect))
    }

    /// The maintenance window pausing remediation of `target` at `now_ms`, if one does: its
    /// description and when the last pausing window ends. Windows that cannot be read are
    /// skipped (and logged): a broken window pauses nothing rather than everything.
    fn paused_by(
        &self,
        raw: &std::collections::HashMap<String, String>,
        target: &Target,
        now_ms: u64,
    ) -> Option<(String, u64)> {
        let windows: Vec<maintenance::Window> = raw
            .iter()
            .take(maintenance::MAX_WINDOWS)
            .filter_map(|(id, json)| match serde_json::from_str(json) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(window = %id, error = %e, "unreadable maintenance window ignored");
                    None
                }
            })
            .collect();
        if windows.is_empty() {
            return None;
        }
        let now = Utc.timestamp_millis_opt(now_ms as i64).single()?;
        let labels: std::collections::BTreeMap<String, String>;
        let who = match target {
            Target::Found(c) => {
                labels = c
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Some((c.name.as_str(), &labels))
            }
            Target::Host | Target::Gone => None,
        };
        let holding = maintenance::pausing(
            &windows,
            now,
            &self.host,
            who,
            maintenance::Pausing::Remediation,
        );
        let (w, occ) = holding.first()?;
        let what = if w.comment.is_empty() {
            w.describe()
        } else {
            format!("\"{}\" ({})", w.comment, w.describe())
        };
        Some((what, occ.end.timestamp_millis().max(0) as u64))
    }

    /// Proposes the job's action to a person, once (a responder that dies after this and a
    /// successor that judges again find the proposal and do not propose twice): the proposal's
    /// record, its place in the host's index, an `approval_needed` escalation (the chat message
    /// that links to the decision) and its audit entry, in one step.
    async fn propose(&self, job: &Job, expires_ms: u64) -> anyhow::Result<()> {
        let now = now_ms();
        let key = proposals::proposal(&self.host, &job.id);
        let expires_at = Utc
            .timestamp_millis_opt(expires_ms as i64)
            .single()
            .unwrap_or_else(Utc::now);
        let keep = (self.cfg.approval_ttl + HANDLED_TTL).as_secs().to_string();
        let container = job
            .req
            .container
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let esc = Escalation {
            kind: EscalationKind::ApprovalNeeded,
            severity: Severity::Warning,
            container: job.req.container.clone(),
            summary: format!(
                "approve {} of {}? {}",
                verb(job.req.action),
                job.name(),
                job.req.root_cause
            ),
            detail: format!(
                "{} It passed every guard; nothing happens unless a person approves it before {} (HEMOSTAT_APPROVAL_TTL).",
                job.req.reason,
                expires_at.format("%H:%M:%S UTC")
            ),
            proposal: Some(hemostat_common::events::Proposal {
                id: job.id.clone(),
                action: job.req.action,
                expires_at,
            }),
        };
        let ops = vec![
            Op::cmd([
                "HSET",
                &key,
                "action",
                verb(job.req.action),
                "container",
                &container,
                "root_cause",
                &job.req.root_cause,
                "reason",
                &job.req.reason,
                "proposed_ms",
                &now.to_string(),
                "expires_ms",
                &expires_ms.to_string(),
            ]),
            Op::cmd(["EXPIRE", &key, &keep]),
            Op::cmd([
                "ZADD",
                &proposals::index(&self.host),
                &expires_ms.to_string(),
                &job.id,
            ]),
            // The index forgets proposals a week past their expiry.
            Op::cmd([
                "ZREMRANGEBYSCORE",
                &proposals::index(&self.host),
                "-inf",
                &now.saturating_sub(HANDLED_TTL.as_millis() as u64)
                    .to_string(),
            ]),
        ];
        let published = self
            .bus
            .publish_once_with(
                &keys::escalated(&self.host, &format!("proposal:{}", job.id)),
                self.cfg.approval_ttl + HANDLED_TTL,
                &[Envelope::new(AGENT, &self.host, Payload::Escalation(esc))],
                &[AUDIT_STREAM],
                &ops,
            )
            .await?;
        if published {
            self.metrics.escalations.inc();
            tracing::info!(request = %job.id, container = job.name(), action = verb(job.req.action), "proposed; waiting for a person's approval");
        }
        Ok(())
    }

    /// A person's pause, or a stop of theirs since the container last started (from Docker's
    /// history, and from the health alerts on the bus, which remember longer).
    async fn person(
        &self,
        c: &guards::Container,
        i: &ContainerInspectResponse,
    ) -> Option<PersonAction> {
        if c.status == "paused" {
            return Some(PersonAction::Paused);
        }
        if matches!(c.status.as_str(), "running" | "restarting") {
            return None;
        }
        (docker_ops::stopped_by_a_person(&self.docker, i).await
            || self.stop_reported_on_the_bus(i).await)
            .then_some(PersonAction::Stopped)
    }

    /// Whether the monitor reported a person's stop of this container since it last started.
    /// Docker keeps only its last 256 events, which a busy engine turns over in seconds; the
    /// `health_alert` stream remembers much longer.
    async fn stop_reported_on_the_bus(&self, i: &ContainerInspectResponse) -> bool {
        let Some(id) = i.id.as_deref() else {
            return false;
        };
        let started = docker_ops::time_ms(i.state.as_ref().and_then(|s| s.started_at.as_deref()));
        let reported = self.recent_alerts.read(&self.bus, |mut recent| {
            recent.any(|e| match &e.payload {
                Payload::ContainerUserAction(a) => {
                    a.container.id == id
                        && a.kind == hemostat_common::events::AlertKind::Stopped
                        && e.host == self.host
                        && started.is_none_or(|s| e.timestamp.timestamp_millis() as u64 >= s)
                }
                _ => false,
            })
        });
        reported.await.unwrap_or(false)
    }

    /// What the monitor last said since `since_ms` about each container of this host it
    /// alerted on: `Some(when)` if that was a failure (died, OOM-killed, unhealthy), `None` if a
    /// recovery or a person's action.
    async fn alerted_state(&self, since_ms: u64) -> std::collections::HashMap<String, Option<u64>> {
        use hemostat_common::events::AlertKind;
        let read = self.recent_alerts.read(&self.bus, |recent| {
            let mut state = std::collections::HashMap::new();
            // Newest first: the first word about a container is the last thing said.
            for e in recent.take_while(|e| e.timestamp.timestamp_millis().max(0) as u64 >= since_ms)
            {
                if e.host != self.host {
                    continue;
                }
                let at = e.timestamp.timestamp_millis().max(0) as u64;
                match &e.payload {
                    Payload::ContainerUnhealthy(a)
                        if !a.user_initiated
                            && matches!(
                                a.kind,
                                AlertKind::Died | AlertKind::OomKilled | AlertKind::Unhealthy
                            ) =>
                    {
                        state.entry(a.container.name.clone()).or_insert(Some(at));
                    }
                    Payload::ContainerRecovered(a) | Payload::ContainerUserAction(a) => {
                        state.entry(a.container.name.clone()).or_insert(None);
                    }
                    _ => {}
                }
            }
            state
        });
        read.await.unwrap_or_default()
    }

    /// The monitor's newest measurement of what a threshold request names, if it was taken
    /// after the request: an older one cannot show that the problem still holds.
    async fn measured(&self, job: &Job, target: &Target, now: u64) -> Measured {
        let Some(problem) = &job.req.problem else {
            return Measured::NotNeeded;
        };
        let after = job.env.timestamp;
        let age_ms = now.saturating_sub(after.timestamp_millis().max(0) as u64);
        let metric = problem.metric.clone().unwrap_or_default();
        let value = match (problem.kind, target) {
            (
                ProblemKind::CpuHigh | ProblemKind::MemoryHigh | ProblemKind::Anomaly,
                Target::Found(c),
            ) => {
                let id = c.id.clone();
                let cores = c.cpu_limit_cores;
                self.recent_metrics
                    .read(&self.bus, |mut recent| {
                        recent.find_map(|e| match &e.payload {
                            Payload::ContainerMetrics(b)
                                if e.host == self.host && e.timestamp > after =>
                            {
                                let s = b.samples.iter().find(|s| s.id == id)?;
                                match metric.as_str() {
                                    "cpu_percent" => s.cpu_percent.map(|v| match cores {
                                        Some(n) if n > 0.0 => v / n,
                                        _ => v,
                                    }),
                                    _ => s.memory_percent,
                                }
                            }
                            _ => None,
                        })
                    })
                    .await
                    .ok()
                    .flatten()
            }
            (
                ProblemKind::DiskPressure | ProblemKind::MemoryPressure | ProblemKind::CpuPressure,
                _,
            ) => self
                .recent_metrics
                .read(&self.bus, |mut recent| {
                    recent.find_map(|e| match &e.payload {
                        Payload::HostMetrics(h) if e.host == self.host && e.timestamp > after => {
                            match metric.as_str() {
                                "memory_percent" => Some(h.memory_percent),
                                "cpu_percent" => h.cpu_percent,
                                _ => Some(h.disk_percent),
                            }
                        }
                        _ => None,
                    })
                })
                .await
                .ok()
                .flatten(),
            _ => return Measured::NotNeeded,
        };
        value.map_or(Measured::NotYet { age_ms }, Measured::Value)
    }

    /// The host's containers, listed at most once a second for the storm guard.
    async fn listing(&self) -> Arc<Listing> {
        let mut cached = self.listing.lock().await;
        if let Some((at, l)) = cached.as_ref()
            && at.elapsed() < LISTING_TTL
        {
            return l.clone();
        }
        let list = self
            .docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .build(),
            ))
            .await;
        let Ok(list) = list else {
            // Not cached: the next request asks again.
            return Arc::default();
        };
        let mut l = Listing::default();
        for c in list {
            let labels = c.labels.clone().unwrap_or_default();
            if !self.cfg.scope.contains(&labels) {
                continue;
            }
            l.in_scope += 1;
            let name = docker_ops::summary_name(&c);
            l.names.insert(name.clone());
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            let unhealthy = c
                .status
                .as_deref()
                .is_some_and(|s| s.contains("(unhealthy)"));
            if unhealthy || matches!(state.as_str(), "exited" | "dead" | "restarting") {
                l.troubled.insert(name);
            }
        }
        let l = Arc::new(l);
        *cached = Some((Instant::now(), l.clone()));
        l
    }

    // ---- acting ---------------------------------------------------------------------------

    async fn act(
        &self,
        job: &Job,
        facts: &Facts,
        inspect: Option<&ContainerInspectResponse>,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let labels = inspect.map(docker_ops::labels).unwrap_or_default();
        let stop = docker_ops::stop_timeout(&labels, self.cfg.stop_timeout);
        let verify_until = now + (stop + self.cfg.verify_timeout).as_millis() as u64;
        let cleanup = (job.req.action == Action::Cleanup).then_some(self.cfg.cleanup_cooldown);
        match self
            .queue
            .intent(
                job,
                now,
                self.history_horizon(),
                self.policies.writes.per_minute,
                self.cfg.dry_run,
                cleanup,
                verify_until,
                match &facts.target {
                    Target::Found(c) => c.started_at_ms,
                    _ => None,
                },
            )
            .await?
        {
            Intent::Recorded => {}
            Intent::Locked(holder) => {
                let why = format!("another request ({holder}) is acting on it right now");
                self.queue
                    .defer(
                        job,
                        now + guards::RECHECK.as_millis() as u64,
                        Phase::Queued,
                        Some((Guard::Lock, &why)),
                        None,
                        now,
                    )
                    .await?;
                return Ok(());
            }
            Intent::NoSlot => {
                let why = "the host's Docker write budget was spent meanwhile";
                self.queue
                    .defer(
                        job,
                        now + 1_000,
                        Phase::Queued,
                        Some((Guard::RateLimit, why)),
                        None,
                        now,
                    )
                    .await?;
                return Ok(());
            }
            Intent::Lost => return Ok(()),
        }
        let job = Job {
            phase: Phase::Acting,
            acted_at_ms: Some(now),
            started_before_ms: match &facts.target {
                Target::Found(c) => c.started_at_ms,
                _ => None,
            },
            verify_until_ms: Some(verify_until),
            ..job.clone()
        };
        if job.req.action == Action::Cleanup {
            return self.cleanup(&job).await;
        }
        let Target::Found(c) = &facts.target else {
            // The guards refuse container actions without a container; nothing to do.
            return Ok(());
        };
        if self.cfg.dry_run {
            let r = Report::new(
                Outcome::Skipped,
                format!(
                    "dry run: would {} {} (stop timeout {}s); no Docker call made",
                    verb(job.req.action),
                    c.name,
                    stop.as_secs()
                ),
            );
            return self.report(&job, r).await;
        }
        self.fault(Point::BeforeDockerWrite, &job).await;
        let t0 = Instant::now();
        let result = match job.req.action {
            Action::Restart => docker_ops::restart(&self.docker, &c.id, stop).await,
            Action::Stop => docker_ops::stop(&self.docker, &c.id, stop).await,
            Action::Start => docker_ops::start(&self.docker, &c.id).await,
            Action::Cleanup | Action::None => Ok(()),
        };
        self.fault(Point::AfterDockerWrite, &job).await;
        if let Err(e) = result {
            let mut r = Report::new(
                Outcome::Failed,
                format!("docker {} of {} failed: {e}", verb(job.req.action), c.name),
            );
            r.escalation = Some(self.failed_escalation(&job, &r.reason));
            return self.report(&job, r).await;
        }
        tracing::info!(
            took_ms = t0.elapsed().as_millis() as u64,
            "docker {} done",
            verb(job.req.action)
        );
        let job = Job {
            phase: Phase::Verifying,
            ..job
        };
        if !self.queue.set_phase(&job, Phase::Verifying).await? {
            return Ok(());
        }
        if self.shutdown.is_cancelled() {
            // A successor verifies it.
            self.queue
                .defer(&job, now_ms(), Phase::Verifying, None, None, now_ms())
                .await?;
            return Ok(());
        }
        self.look(&job).await
    }

    /// A job found in `acting`: its responder died during or right after the Docker call.
    async fn resume(&self, job: &Job) -> anyhow::Result<()> {
        let acted = job.acted_at_ms.unwrap_or(job.admitted_at_ms);
        if job.req.action == Action::Cleanup {
            // Removing what is still eligible again is harmless: what is gone stays gone.
            return self.cleanup(job).await;
        }
        let (target, _) = self.target(job).await;
        let events = match &target {
            Target::Found(c) => docker_ops::events_since(&self.docker, &c.id, acted).await,
            _ => Vec::new(),
        };
        match guards::reached(job.req.action, &target, job.acted(), &events) {
            Reached::Yes => {
                tracing::info!(request = %job.id, "taking over an action that reached Docker; verifying it");
                if !self.queue.set_phase(job, Phase::Verifying).await? {
                    return Ok(());
                }
                let job = Job {
                    phase: Phase::Verifying,
                    ..job.clone()
                };
                self.look(&job).await
            }
            Reached::No => {
                tracing::info!(request = %job.id, "taking over an action that never reached Docker; judging it again");
                if !self.queue.set_phase(job, Phase::Queued).await? {
                    return Ok(());
                }
                let job = Job {
                    phase: Phase::Queued,
                    ..job.clone()
                };
                self.judge(&job).await
            }
        }
    }

    /// One verification look.
    async fn look(&self, job: &Job) -> anyhow::Result<()> {
        let now = now_ms();
        let acted = job.acted_at_ms.unwrap_or(job.admitted_at_ms);
        let (target, inspect) = self.target(job).await;
        let person = match (&target, &inspect) {
            (Target::Found(c), Some(i)) => self.person(c, i).await,
            _ => None,
        };
        let name = job.name().to_owned();
        let waited_ms = now.saturating_sub(acted);
        let check = guards::verify_step(job.req.action, &target, job.acted(), person);
        let report = match check {
            Check::Verified { healthy, detail } => {
                let mut r = Report::new(
                    Outcome::Success,
                    format!(
                        "{} {name}; verified after {}: {detail}",
                        past(job.req.action),
                        secs(waited_ms)
                    ),
                );
                r.verification = Some(Verification {
                    running: job.req.action != Action::Stop,
                    healthy,
                    waited_ms,
                    detail,
                });
                if job.req.action == Action::Restart
                    && let Target::Found(c) = &target
                {
                    self.dependents(job, c, acted, &mut r).await;
                }
                r
            }
            Check::Failed(detail) => {
                let mut r = Report::new(
                    Outcome::Failed,
                    format!("{} {name}, but {detail}", past(job.req.action)),
                );
                r.verification = Some(Verification {
                    running: true,
                    healthy: Some(false),
                    waited_ms,
                    detail,
                });
                r.escalation = Some(self.failed_escalation(job, &r.reason));
                r
            }
            Check::Superseded(why) => Report::refused(Outcome::Superseded, Guard::Person, why),
            Check::Pending(detail) => {
                let until = job.verify_until_ms.unwrap_or(acted);
                if now < until {
                    let next = now + verify_interval(job.looks).as_millis() as u64;
                    self.queue
                        .defer(
                            job,
                            next.min(until),
                            Phase::Verifying,
                            None,
                            Some(&detail),
                            now,
                        )
                        .await?;
                    return Ok(());
                }
                let reason = format!(
                    "{} {name}, but verification timed out after {}: {detail}",
                    past(job.req.action),
                    secs(waited_ms)
                );
                let mut r = Report::new(Outcome::Failed, reason);
                r.verification = Some(Verification {
                    running: detail.starts_with("running"),
                    healthy: None,
                    waited_ms,
                    detail,
                });
                r.escalation = Some(self.failed_escalation(job, &r.reason));
                r
            }
        };
        self.report(job, report).await
    }

    /// Queues a restart for each container that depends on the one just restarted (shared
    /// network namespace, `hemostat.depends_on`): each passes the guards as a request of its own.
    async fn dependents(&self, job: &Job, parent: &guards::Container, acted: u64, r: &mut Report) {
        let deps = docker_ops::dependents(&self.docker, &parent.id, &parent.name).await;
        if deps.is_empty() {
            return;
        }
        // Out of scope is not hemostat's business: named, never queued.
        let (deps, outside): (Vec<_>, Vec<_>) = deps
            .into_iter()
            .partition(|(_, _, labels)| self.cfg.scope.contains(labels));
        if !deps.is_empty() {
            let names: Vec<&str> = deps.iter().map(|(_, n, _)| n.as_str()).collect();
            r.reason = format!("{}; dependents queued: {}", r.reason, names.join(", "));
        }
        if !outside.is_empty() {
            let names: Vec<&str> = outside.iter().map(|(_, n, _)| n.as_str()).collect();
            r.reason = format!(
                "{}; dependents not in scope, left alone: {}",
                r.reason,
                names.join(", ")
            );
        }
        for (id, name, _) in &deps {
            r.follow_ups.push(Envelope::new(
                AGENT,
                &self.host,
                Payload::RemediationNeeded(RemediationRequest {
                    requested_by: None,
                    container: Some(ContainerRef {
                        id: id.clone(),
                        name: name.clone(),
                        ..ContainerRef::default()
                    }),
                    target_host: self.host.clone(),
                    action: Action::Restart,
                    root_cause: format!(
                        "{} was restarted and {name} depends on it (a shared network namespace or hemostat.depends_on)",
                        parent.name
                    ),
                    reason: format!("restart after its parent {}", parent.name),
                    confidence: 1.0,
                    analysis_method: AnalysisMethod::Rules,
                    fallback_reason: None,
                    alert_id: job.req.alert_id.clone(),
                    problem: Some(Problem {
                        since: ms_to_time(acted),
                        parent: Some(parent.name.clone()),
                        ..Problem::new(ProblemKind::DependencyRestarted)
                    }),
                }),
            ));
        }
    }

    async fn cleanup(&self, job: &Job) -> anyhow::Result<()> {
        let now = now_ms();
        let mut candidates = match docker_ops::exited_containers(&self.docker).await {
            Ok(c) => c,
            Err(e) => {
                let r = Report::new(Outcome::Failed, format!("cleanup failed: {e}"));
                return self.report(job, r).await;
            }
        };
        for c in &mut candidates {
            if !c.stopped_by_a_person
                && let Ok(i) = docker_ops::inspect(&self.docker, &c.id).await
            {
                c.stopped_by_a_person = self.stop_reported_on_the_bus(&i).await;
            }
        }
        let plan =
            docker_ops::plan_cleanup(candidates, &self.cfg.scope, self.cfg.cleanup_min_age, now);
        let names: Vec<&str> = plan.remove.iter().map(|c| c.name.as_str()).collect();
        let volumes = if self.cfg.cleanup_volumes {
            "removed"
        } else {
            "kept"
        };
        let r = if self.cfg.dry_run {
            Report::new(
                Outcome::Skipped,
                format!(
                    "dry run: would remove {} exited container(s) [{}] and dangling images older than 1 h; volumes {volumes}; left alone: [{}]",
                    names.len(),
                    names.join(", "),
                    plan.keep.join("; ")
                ),
            )
        } else {
            self.fault(Point::BeforeDockerWrite, job).await;
            match docker_ops::remove_planned(&self.docker, &plan, self.cfg.cleanup_volumes).await {
                Ok((removed, refused, images, bytes)) => {
                    let mut keep = plan.keep.clone();
                    keep.extend(refused);
                    Report::new(
                        Outcome::Success,
                        format!(
                            "removed {} exited container(s) [{}]; {images} dangling image(s), {} MiB reclaimed; volumes {volumes}; left alone: [{}]",
                            removed.len(),
                            removed.join(", "),
                            bytes / (1024 * 1024),
                            keep.join("; ")
                        ),
                    )
                }
                Err(e) => Report::new(Outcome::Failed, format!("cleanup failed: {e}")),
            }
        };
        self.report(job, r).await
    }

    fn failed_escalation(&self, job: &Job, reason: &str) -> Escalation {
        Escalation {
            proposal: None,
            kind: EscalationKind::RemediationFailed,
            severity: Severity::Critical,
            container: job.req.container.clone(),
            summary: format!(
                "{} of {} failed",
                capitalised(verb(job.req.action)),
                job.name()
            ),
            detail: reason.to_owned(),
        }
    }

    // ---- escalations that happen once per episode ---------------------------------------

    /// Publishes `e` unless the escalation for `episode` was sent already.
    async fn escalate_once(
        &self,
        episode: &str,
        ttl: Duration,
        e: Escalation,
    ) -> anyhow::Result<()> {
        let env = Envelope::new(AGENT, &self.host, Payload::Escalation(e));
        let sent = self
            .bus
            .publish_once_to(
                &keys::escalated(&self.host, episode),
                ttl,
                &[env],
                &[AUDIT_STREAM],
            )
            .await?;
        if sent {
            self.metrics.escalations.inc();
            tracing::warn!(episode, "escalated to a person");
        }
        Ok(())
    }

    /// Opens the container's breaker (if no one did yet) and sends its one escalation.
    async fn open_breaker(&self, job: &Job, in_window: u32) -> anyhow::Result<()> {
        let key = keys::breaker(&self.host, job.name());
        let mut conn = self.bus.connection();
        let (_, opening): ((), Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(ulid::Ulid::new().to_string())
            .arg("NX")
            .arg("EX")
            .arg(self.cfg.breaker.cooldown.as_secs().max(1))
            .cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let opening = opening.unwrap_or_default();
        if let Some(c) = &job.req.container {
            self.fleet.breaker_opened(c);
        }
        self.escalate_once(
            &format!("breaker:{}:{opening}", job.name()),
            self.cfg.breaker.cooldown * 2,
            Escalation {
                proposal: None,
                kind: EscalationKind::CircuitBreakerOpen,
                severity: Severity::Critical,
                container: job.req.container.clone(),
                summary: format!(
                    "{} was remediated {in_window} times in {} min; hemostat stopped trying",
                    job.name(),
                    self.cfg.breaker.window.as_secs() / 60
                ),
                detail: "a person must look; reset with `hemostat-responder reset-breaker`".into(),
            },
        )
        .await
    }

    async fn policy_loop(&self, job: &Job, restarts: i64) -> anyhow::Result<()> {
        self.escalate_once(
            &format!("policy_loop:{}", job.name()),
            self.cfg.breaker.cooldown,
            Escalation {
                proposal: None,
                kind: EscalationKind::CrashLoop,
                severity: Severity::Critical,
                container: job.req.container.clone(),
                summary: format!(
                    "{}: Docker's restart policy has restarted it {restarts} times and it keeps failing",
                    job.name()
                ),
                detail: "hemostat does not fight Docker's restart policy; a person must look".into(),
            },
        )
        .await
    }

    /// Marks the storm in progress (one id per storm) and, once it has lasted
    /// [`STORM_SETTLE`], sends its one escalation naming every container held by then: the
    /// failures of one host-wide fault arrive over a moment, and a page naming the first few
    /// would hide the rest.
    async fn storm(&self, failing: &[String], limit: u32, in_scope: u32) -> anyhow::Result<()> {
        let key = keys::storm(&self.host);
        let window = self.cfg.storm.window.as_millis().max(1000) as u64;
        let now = now_ms();
        let mut conn = self.bus.connection();
        let (_, _, episode): ((), (), Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(format!("{}:{now}", ulid::Ulid::new()))
            .arg("NX")
            .arg("PX")
            .arg(window)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(window)
            .cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let episode = episode.unwrap_or_default();
        let began = episode
            .rsplit_once(':')
            .and_then(|(_, t)| t.parse::<u64>().ok())
            .unwrap_or(now);
        let settle = STORM_SETTLE.min(self.cfg.storm.window / 2).as_millis() as u64;
        if now.saturating_sub(began) < settle {
            return Ok(());
        }
        self.escalate_once(
            &format!("storm:{episode}"),
            self.cfg.storm.window * 10,
            Escalation {
                proposal: None,
                kind: EscalationKind::RemediationPaused,
                severity: Severity::Critical,
                container: None,
                summary: format!(
                    "{} of {in_scope} containers on {} began failing within {} s: remediation held",
                    failing.len(),
                    self.host,
                    self.cfg.storm.window.as_secs()
                ),
                detail: format!(
                    "a host-wide problem (disk, network, a shared dependency) is likely; restarting everything would make it worse. \
                     Held: {}. A storm is {limit} or more failing at once; once fewer began failing within the window, \
                     hemostat acts on those still failing.",
                    failing.join(", ")
                ),
            },
        )
        .await
    }

    // ---- fleet metrics --------------------------------------------------------------------

    /// Every [`fleet::REFRESH`]: re-reads which breakers are open (they expire, and a person
    /// resets them) and drops the series of containers that are gone.
    async fn refresh_fleet(self: Arc<Self>) {
        let mut tick = tokio::time::interval(fleet::REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let listed_at = Instant::now();
            let list = self
                .docker
                .list_containers(Some(
                    bollard::query_parameters::ListContainersOptionsBuilder::new()
                        .all(true)
                        .build(),
                ))
                .await;
            // Without a listing nothing is dropped: an engine outage removes no series.
            let Ok(list) = list else { continue };
            let present: std::collections::HashMap<
                String,
                hemostat_common::metrics::ContainerLabels,
            > = list
                .iter()
                .filter(|c| {
                    self.cfg
                        .scope
                        .contains(&c.labels.clone().unwrap_or_default())
                })
                .map(|c| {
                    let name = docker_ops::summary_name(c);
                    let labels =
                        hemostat_common::scrub::scrub_labels(c.labels.clone().unwrap_or_default());
                    let image =
                        hemostat_common::scrub::scrub(c.image.as_deref().unwrap_or_default());
                    let l = hemostat_common::metrics::ContainerLabels::new(
                        &self.host,
                        &name,
                        &image,
                        |k| labels.get(k).map(String::as_str),
                    );
                    (name, l)
                })
                .collect();
            match self.open_breakers().await {
                Ok(open) => self.fleet.refresh(&present, &open, listed_at),
                Err(e) => tracing::debug!(error = %e, "cannot read the breakers"),
            }
        }
    }

    /// The names of this host's containers whose breaker is open.
    async fn open_breakers(&self) -> anyhow::Result<HashSet<String>> {
        let prefix = keys::breaker(&self.host, "");
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut conn = self.bus.connection();
        let mut cursor: u64 = 0;
        let mut open = HashSet::new();
        // Bounded: at most 1,000 rounds of 500.
        for _ in 0..1_000 {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            open.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)),
            );
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(open)
    }

    // ---- reporting ------------------------------------------------------------------------

    /// Publishes the result (and any escalation and follow-up requests) once, to the channel
    /// and the audit stream, in the same atomic step that takes the job out of the queue and
    /// releases its lock.
    async fn report(&self, job: &Job, r: Report) -> anyhow::Result<()> {
        self.fault(Point::BeforeReport, job).await;
        let now = now_ms();
        let took = now.saturating_sub(job.admitted_at_ms);
        // The Docker call was made: only then is there a verification.
        let acted = r.verification.is_some() && !self.cfg.dry_run;
        let result = RemediationResult {
            container: job.req.container.clone(),
            request_id: job.id.clone(),
            action: job.req.action,
            outcome: r.outcome,
            reason: r.reason.clone(),
            verification: r.verification,
            duration_ms: took,
            dry_run: self.cfg.dry_run,
            guard: r.guard,
            problem: job.req.problem.as_ref().map(|p| p.kind),
        };
        let mut envs = vec![Envelope::new(
            AGENT,
            &self.host,
            Payload::RemediationComplete(result),
        )];
        let escalated = r.escalation.is_some();
        if let Some(e) = r.escalation {
            envs.push(Envelope::new(AGENT, &self.host, Payload::Escalation(e)));
        }
        let mut ops = self.queue.finish_ops(job);
        for f in &r.follow_ups {
            ops.extend(self.queue.enqueue_ops(f, now));
        }
        envs.extend(r.follow_ups.iter().cloned());
        let published = self
            .bus
            .publish_once_with(
                &keys::handled(&self.host, &job.id),
                HANDLED_TTL,
                &envs,
                &[AUDIT_STREAM],
                &ops,
            )
            .await?;
        if !published {
            // Reported already (a peer that took the job over raced us): just clean up.
            self.queue.forget(job).await?;
            return Ok(());
        }
        if !r.follow_ups.is_empty() {
            self.wake.notify_one();
        }
        self.metrics
            .decisions
            .get_or_create(&ActionLabel {
                action: verb(job.req.action).to_owned(),
                outcome: outcome_name(r.outcome).to_owned(),
            })
            .inc();
        if escalated {
            self.metrics.escalations.inc();
        }
        if let Some(c) = &job.req.container {
            let began = job
                .req
                .problem
                .as_ref()
                .and_then(|p| p.since)
                .map_or(job.admitted_at_ms, |t| t.timestamp_millis().max(0) as u64);
            let recovered = acted
                && r.outcome == Outcome::Success
                && matches!(job.req.action, Action::Restart | Action::Start);
            self.fleet.decided(
                c,
                fleet::Decided {
                    action: job.req.action,
                    outcome: r.outcome,
                    acted,
                    recovered_after: recovered.then(|| now.saturating_sub(began) as f64 / 1000.0),
                },
            );
        }
        tracing::info!(container = job.name(), action = verb(job.req.action), outcome = outcome_name(r.outcome),
            guard = r.guard.map(Guard::as_str), reason = %r.reason, dry_run = self.cfg.dry_run,
            duration_ms = took, "remediation decision");
        Ok(())
    }
}

/// Logs a step task that panicked; its job's lease lapses and it is taken over.
fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a remediation step ended abnormally");
    }
}

/// The pause before the next verification look: short at first, when a restart usually
/// completes, then up to 2 s for health checks that take their time.
fn verify_interval(looks: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << looks.min(3))).min(Duration::from_secs(2))
}

fn past(a: Action) -> &'static str {
    match a {
        Action::Restart => "restarted",
        Action::Stop => "stopped",
        Action::Start => "started",
        Action::Cleanup => "cleaned up",
        Action::None => "left",
    }
}

/// `s` with Redis's glob characters escaped, for a `MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failed => "failed",
        Outcome::Rejected => "rejected",
        Outcome::Skipped => "skipped",
        Outcome::Superseded => "superseded",
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Closes a container's breaker and forgets its history (the explicit reset command).
pub async fn reset_breaker(bus: &Bus, host: &str, name: &str) -> anyhow::Result<u64> {
    let mut conn = bus.connection();
    let n: u64 = redis::cmd("DEL")
        .arg(keys::breaker(host, name))
        .arg(keys::history(host, name))
        .query_async(&mut conn)
        .await?;
    Ok(n)
}

/// Starts the responder on `ctx`: the intake of requests (consumer group `responder:<host>`,
/// so every host's responders see every request and take only their own host's), the
/// scheduler of the host's queue, and the renewal of its leases.
/// Makes sure the key that signs approval links exists (the first responder makes it; it is
/// never replaced, so links stay valid), retrying until Redis answers or shutdown. Returns
/// once it exists; the task ending is no failure, so it waits for shutdown after.
async fn ensure_signing_key(bus: Bus, shutdown: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let key: String = {
            use rand::RngCore as _;
            let mut b = [0u8; 32];
            rand::rng().fill_bytes(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect()
        };
        let mut conn = bus.connection();
        let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(proposals::SIGNING_KEY)
            .arg(&key)
            .arg("NX")
            .query_async(&mut conn)
            .await;
        match r {
            Ok(_) => break,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::debug!(error = %e, retry_in = ?d, "could not make sure the approval signing key exists");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(d) => {}
                }
            }
        }
    }
    shutdown.cancelled().await;
}

pub fn spawn(responder: Arc<Responder>, ctx: &AgentContext) {
    responder.register(ctx);
    let group = format!("{AGENT}:{}", ctx.identity.host);
    for channel in [Channel::RemediationNeeded, Channel::PersonRequest] {
        let mut cfg = ConsumerConfig::new(channel, &group, &ctx.identity.instance);
        // Intake only records the request: quick, so many at once and a short reclaim.
        cfg.concurrency = 16;
        let bus = ctx.bus.clone();
        let shutdown = ctx.shutdown.clone();
        let r = responder.clone();
        ctx.spawn_critical("remediation intake", async move {
            consume(&bus, cfg, shutdown, |env| {
                let r = r.clone();
                async move { r.admit(env).await }
            })
            .await;
        });
    }
    ctx.spawn_critical(
        "approval signing key",
        ensure_signing_key(ctx.bus.clone(), ctx.shutdown.clone()),
    );
    ctx.spawn_critical("remediation queue", responder.clone().schedule());
    ctx.spawn_critical("fleet metrics", responder.clone().refresh_fleet());
    ctx.spawn_critical("lease renewal", responder.renew_leases());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_looks_back_off_to_two_seconds() {
        let looks: Vec<u64> = (0..6)
            .map(|n| verify_interval(n).as_millis() as u64)
            .collect();
        assert_eq!(looks, [250, 500, 1000, 2000, 2000, 2000]);
    }
}
