//! Fault injection against the real Docker engine and a real redis-server: that hemostat is never
//! worse than doing nothing, and that no agent's death at any instant drops work or repeats an
//! effect.
//!
//! Each test owns its Redis, its containers and its agents, and scopes the agents to its own
//! containers (`HEMOSTAT_SCOPE_LABEL=hemostat.test=<prefix>`), so tests run side by side without
//! seeing each other. Agents run in the test process; a responder that must die "at any
//! instant" runs in a runtime of its own ([`Killable`]) that the test drops mid-step, which is
//! what SIGKILL does to it as far as Redis and Docker can tell: nothing more is written and its
//! connections close.
//!
//! Every claim is read back from Docker's own records (inspect, its event history) and from
//! the streams (`remediation_complete`, `alerts`, the audit stream), never from timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::InspectContainerOptions;
use chrono::{DateTime, Utc};
use hemostat_common::bus::Bus;
use hemostat_common::events::{
    Action, AlertKind, AnalysisMethod, Channel, ContainerRef, Detection, Envelope, Escalation,
    EscalationKind, Guard, Outcome, Payload, Problem, ProblemKind, RemediationRequest,
    RemediationResult,
};
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::shutdown::Shutdown;
use hemostat_responder::queue::MAX_LAPSES;
use hemostat_responder::{FaultHook, Point};
use hemostat_tests::openai_stub::RunningAnalyzer;
use hemostat_tests::pipeline::{HOST, Killable, RunningResponder};
use hemostat_tests::records::{
    self, engine_to_ourselves, escalation_of, finished_at, result_of, started_at, status,
};
use hemostat_tests::{
    Patient, PatientSpec, RunningMonitor, StreamReader, TestRedis, docker, ensure_patient_image,
    init_logs, random_id,
};

const WAIT: Duration = Duration::from_secs(40);

/// One test's world: Redis, Docker, a publisher, readers, and a scope of its own.
struct Trial {
    redis: TestRedis,
    docker: Docker,
    bus: Bus,
    prefix: String,
    results: StreamReader,
    alerts: StreamReader,
    health: StreamReader,
}

impl Trial {
    async fn start() -> Option<Trial> {
        init_logs();
        let redis = TestRedis::start()?;
        let docker = docker().await?;
        if !engine_to_ourselves() {
            return None;
        }
        ensure_patient_image();
        let bus = Bus::connect(
            &redis.url(),
            10_000,
            AgentMetrics::default(),
            Health::default(),
            &Shutdown::new(),
        )
        .await
        .expect("publisher bus");
        Some(Trial {
            results: StreamReader::new(&redis, Channel::RemediationComplete),
            alerts: StreamReader::new(&redis, Channel::Alerts),
            health: StreamReader::new(&redis, Channel::HealthAlert),
            redis,
            docker,
            bus,
            prefix: format!("hstrust-{}", random_id()),
        })
    }

    /// `--scope-label` for this test's agents.
    fn scope(&self) -> String {
        format!("hemostat.test={}", self.prefix)
    }

    /// A responder with this test's scope and fast settings, plus `extra`.
    async fn responder(&self, extra: &[&str]) -> RunningResponder {
        let scope = self.scope();
        let mut args = vec!["--scope-label", scope.as_str()];
        args.extend_from_slice(extra);
        RunningResponder::start(&self.redis.url(), &args).await
    }

    /// A responder that can be killed, optionally frozen at a fault point.
    async fn killable(&self, extra: &[&str], hook: Option<FaultHook>) -> Killable {
        let scope = self.scope();
        let mut args = vec!["--scope-label", scope.as_str()];
        args.extend_from_slice(extra);
        Killable::start(&self.redis.url(), &args, hook).await
    }

    /// A monitor watching this test's containers only.
    async fn monitor(&self, extra: &[&str]) -> RunningMonitor {
        let scope = self.scope();
        let mut args = vec!["--scope-label", scope.as_str()];
        args.extend_from_slice(extra);
        RunningMonitor::start(&self.redis.url(), &args).await
    }

    /// An analyzer deciding by the rules.
    async fn analyzer(&self) -> RunningAnalyzer {
        RunningAnalyzer::start(&self.redis.url(), &[]).await
    }

    async fn patient(&self, suffix: &str, spec: PatientSpec) -> Patient {
        Patient::start(&self.docker, &self.prefix, suffix, spec).await
    }

    /// A watched container that runs until it is killed.
    async fn sleeper(&self, suffix: &str) -> Patient {
        self.patient(suffix, PatientSpec::watched(&["run"])).await
    }

    async fn inspect(&self, p: &Patient) -> ContainerInspectResponse {
        self.docker
            .inspect_container(&p.id, None::<InspectContainerOptions>)
            .await
            .unwrap_or_else(|e| panic!("inspect {}: {e}", p.name))
    }

    async fn wait_state(
        &self,
        p: &Patient,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ContainerInspectResponse) -> bool,
    ) -> ContainerInspectResponse {
        let deadline = Instant::now() + timeout;
        loop {
            let i = self.inspect(p).await;
            if pred(&i) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became {what} within {timeout:?}: {:?}",
                p.name,
                i.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills `p` as a failure does (SIGKILL, no `stop`) and waits until it is down.
    async fn kill(&self, p: &Patient) -> ContainerInspectResponse {
        p.cli(&["kill"]);
        self.wait_state(p, "exited", WAIT, |i| status(i) == "exited")
            .await
    }

    /// A request for this host as the analyzer would publish it.
    fn request(&self, p: &Patient, action: Action, problem: Option<Problem>) -> Envelope {
        Envelope::new(
            "analyzer",
            HOST,
            Payload::RemediationNeeded(RemediationRequest {
                requested_by: None,
                container: Some(ContainerRef {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    ..ContainerRef::default()
                }),
                target_host: HOST.into(),
                action,
                root_cause: "test: the container needs help".into(),
                reason: "fault-injection test request".into(),
                confidence: 0.9,
                analysis_method: AnalysisMethod::Rules,
                fallback_reason: None,
                alert_id: format!("alert-{}", random_id()),
                problem,
            }),
        )
    }

    async fn send(&self, p: &Patient, action: Action, problem: Option<Problem>) -> Envelope {
        let env = self.request(p, action, problem);
        self.bus.publish(&env).await.expect("publish");
        env
    }

    /// The result of request `req`.
    async fn result(&mut self, req: &Envelope) -> RemediationResult {
        let id = req.id.clone();
        let env = self
            .results
            .wait_for(WAIT, &format!("the result of {id}"), |e| {
                result_of(e).is_some_and(|r| r.request_id == id)
            })
            .await;
        result_of(&env).cloned().expect("a result")
    }

    /// The first result about container `p` that matches `pred`.
    async fn result_about(
        &mut self,
        p: &Patient,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&RemediationResult) -> bool,
    ) -> RemediationResult {
        let name = p.name.clone();
        let env = self
            .results
            .wait_for(timeout, &format!("{what} for {name}"), |e| {
                result_of(e).is_some_and(|r| {
                    r.container.as_ref().is_some_and(|c| c.name == name) && pred(r)
                })
            })
            .await;
        result_of(&env).cloned().expect("a result")
    }

    /// Every audited result of request `id`.
    async fn audited(&self, id: &str) -> Vec<RemediationResult> {
        records::audit(&self.redis.client())
            .await
            .iter()
            .filter_map(result_of)
            .filter(|r| r.request_id == id)
            .cloned()
            .collect()
    }

    /// Escalations of `kind` seen after reading for `d` more.
    async fn escalations(&mut self, kind: EscalationKind, d: Duration) -> Vec<Escalation> {
        self.alerts
            .collect_for(d, |e| escalation_of(e).is_some_and(|x| x.kind == kind))
            .await
            .iter()
            .filter_map(escalation_of)
            .cloned()
            .collect()
    }

    /// Docker's own record: how many `action` events `p` had since `since`.
    async fn count_events(&self, p: &Patient, action: &str, since: DateTime<Utc>) -> usize {
        records::count_events(&self.docker, &p.id, action, since).await
    }
}

fn died() -> Option<Problem> {
    Some(Problem::new(ProblemKind::Died))
}

/// A fault hook that freezes the step of the first request to reach `at`, and says when.
fn freeze_at(at: Point) -> (FaultHook, Arc<tokio::sync::Notify>, Arc<AtomicBool>) {
    let hit = Arc::new(AtomicBool::new(false));
    let told = Arc::new(tokio::sync::Notify::new());
    let (h, t) = (hit.clone(), told.clone());
    let hook: FaultHook = Arc::new(move |point, _job| {
        if point == at && !h.swap(true, Ordering::SeqCst) {
            t.notify_one();
            return true;
        }
        false
    });
    (hook, told, hit)
}

// ---------------------------------------------------------------------------------------------
// One container's wait never holds up another's action.
// ---------------------------------------------------------------------------------------------

/// A container in a 40 s backoff waits as a due time in Redis; meanwhile another container is
/// killed and the whole pipeline (monitor → analyzer → responder) has it running again in
/// well under 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_container_heals_while_another_waits_in_backoff() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _monitor = t.monitor(&[]).await;
    let _analyzer = t.analyzer().await;
    let responder = t
        .responder(&["--backoff-initial", "40s", "--backoff-max", "300s"])
        .await;
    // Dies 1 s after every start: restarted at once the first time, then owed 40 s.
    let looping = t
        .patient(
            "loop",
            PatientSpec::watched(&["run", "--exit-code", "1", "--after", "1"]),
        )
        .await;
    t.result_about(&looping, "a first restart", WAIT, |r| {
        r.outcome == Outcome::Success
    })
    .await;
    // Its next death: the request waits out the backoff (as data, not in a task).
    let waiting = t
        .wait_state(&looping, "dead again", WAIT, |i| status(i) == "exited")
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        if responder
            .responder
            .metrics
            .deferred
            .get_or_create(&hemostat_responder::GuardLabel {
                guard: "backoff".into(),
            })
            .get()
            >= 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "the second restart never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let victim = t.sleeper("victim").await;
    let killed = t.kill(&victim).await;
    let back = t
        .wait_state(&victim, "running again", Duration::from_secs(5), |i| {
            status(i) == "running"
        })
        .await;
    let took = (started_at(&back) - finished_at(&killed)).to_std().unwrap();
    assert!(
        took < Duration::from_secs(5),
        "the victim waited behind the backoff: {took:?}"
    );
    // The looping one is still waiting: not restarted during its backoff.
    let still = t.inspect(&looping).await;
    assert_eq!(status(&still), "exited");
    assert_eq!(started_at(&still), started_at(&waiting));
}

// ---------------------------------------------------------------------------------------------
// Never fight Docker's restart policy.
// ---------------------------------------------------------------------------------------------

/// A `--restart=always` container whose process dies once is brought back by Docker; hemostat
/// sees the death, and its request is skipped and audited: exactly one start after the death,
/// Docker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_restart_policy_brings_it_back_and_hemostat_does_not_restart_it_again() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _monitor = t.monitor(&[]).await;
    let _analyzer = t.analyzer().await;
    let _responder = t.responder(&[]).await;
    let p = t
        .patient(
            "always",
            PatientSpec {
                restart_policy: Some("always".into()),
                ..PatientSpec::watched(&["run"])
            },
        )
        .await;
    let before = t.inspect(&p).await;
    let pid = before
        .state
        .as_ref()
        .and_then(|s| s.pid)
        .expect("a running process");
    // The process dies on its own (killed from the host): a crash, which Docker's policy
    // handles. (`docker kill` would tell Docker not to restart it.)
    let killed_at = Utc::now();
    let ok = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -9 {pid}");
    let r = t
        .result_about(&p, "the decision on the death", WAIT, |_| true)
        .await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert!(
        matches!(r.guard, Some(Guard::RestartPolicy | Guard::Problem)),
        "{r:?}"
    );
    assert!(r.reason.contains("restart policy"), "{r:?}");
    assert_eq!(t.audited(&r.request_id).await.len(), 1);
    // Give a wrong second restart time to show up, then count Docker's own record.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        t.count_events(&p, "start", killed_at).await,
        1,
        "exactly one start after the death: Docker's"
    );
    assert_eq!(t.count_events(&p, "restart", killed_at).await, 0);
    assert_eq!(status(&t.inspect(&p).await), "running");
}

/// When Docker's policy keeps restarting a container that keeps dying, hemostat does not add
/// restarts of its own: it refuses and escalates once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_policy_loop_is_escalated_not_fought() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let rs = t.responder(&["--breaker-threshold", "3"]).await;
    let p = t
        .patient(
            "policyloop",
            PatientSpec {
                restart_policy: Some("on-failure".into()),
                ..PatientSpec::watched(&["run", "--exit-code", "1", "--after", "0.2"])
            },
        )
        .await;
    t.wait_state(&p, "restarted by Docker 3 times", WAIT, |i| {
        i.restart_count.unwrap_or(0) >= 3
    })
    .await;
    let since = Utc::now();
    let first = t.send(&p, Action::Restart, died()).await;
    let second = t.send(&p, Action::Restart, died()).await;
    for req in [&first, &second] {
        let r = t.result(req).await;
        assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
        assert_eq!(r.guard, Some(Guard::RestartPolicy), "{r:?}");
    }
    let loops = t
        .escalations(EscalationKind::CrashLoop, Duration::from_millis(500))
        .await;
    assert_eq!(
        loops.len(),
        1,
        "one escalation, not one per request: {loops:#?}"
    );
    assert_eq!(
        t.count_events(&p, "restart", since).await,
        0,
        "hemostat made no restart of its own"
    );
    assert!(rs.stop().await);
}

// ---------------------------------------------------------------------------------------------
// Any process may die at any instant.
// ---------------------------------------------------------------------------------------------

/// SIGTERM while a request waits in backoff, and a successor started at once: the successor
/// acts when the backoff is over. One restart, one audit entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_backoff_loses_nothing() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let args = ["--backoff-initial", "4s", "--backoff-max", "8s"];
    let first = t.killable(&args, None).await;
    let p = t.sleeper("term").await;
    t.kill(&p).await;
    let r = t.result(&t.send(&p, Action::Restart, died()).await).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    // Dead again: this one owes a 4 s backoff.
    let killed = t.kill(&p).await;
    let since = finished_at(&killed);
    let req = t.send(&p, Action::Restart, died()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(first.terminate().await, "the responder stopped cleanly");
    let _successor = t.killable(&args, None).await;
    let r = t.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert!(r.duration_ms >= 3_000, "acted after the backoff: {r:?}");
    assert_eq!(t.count_events(&p, "start", since).await, 1, "one restart");
    assert_eq!(t.audited(&req.id).await.len(), 1, "one audit entry");
    assert_eq!(status(&t.inspect(&p).await), "running");
}

/// Kills the responder at `point` while it handles a restart of a dead container, starts a
/// successor, and checks that the container was started exactly once and the decision audited
/// exactly once.
async fn killed_at(point: Point) {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let (hook, told, hit) = freeze_at(point);
    let doomed = t.killable(&[], Some(hook)).await;
    let p = t.sleeper("kill9").await;
    let killed = t.kill(&p).await;
    let since = finished_at(&killed);
    let req = t.send(&p, Action::Restart, died()).await;
    tokio::time::timeout(WAIT, told.notified())
        .await
        .expect("the responder reached the fault point");
    assert!(hit.load(Ordering::SeqCst));
    doomed.kill();
    let _successor = t.killable(&[], None).await;
    let r = t.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{point:?}: {r:?}");
    let v = r.verification.as_ref().expect("verified");
    assert!(v.running, "{v:?}");
    assert_eq!(
        t.count_events(&p, "start", since).await,
        1,
        "{point:?}: started exactly once"
    );
    assert_eq!(
        t.audited(&req.id).await.len(),
        1,
        "{point:?}: one audit entry"
    );
    assert_eq!(status(&t.inspect(&p).await), "running");
}

/// A request whose step panics every time is not a zombie: each panic lets its lease lapse,
/// and after `MAX_LAPSES` lapsed claims it is dead-lettered with its request. The responder stays up and heals the next container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_step_always_panics_is_dead_lettered_and_the_responder_goes_on() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let poison = t.sleeper("poison").await;
    let fine = t.sleeper("fine").await;
    let name = poison.name.clone();
    let hook: FaultHook = Arc::new(move |point, job| {
        if point == Point::BeforeDockerWrite && job.name() == name {
            panic!("a step that always panics");
        }
        false
    });
    let responder = t.killable(&["--lease", "1s"], Some(hook)).await;
    t.kill(&poison).await;
    let bad = t.send(&poison, Action::Restart, died()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let letter = loop {
        let found = records::dead_letters(&t.redis.client())
            .await
            .into_iter()
            .find(|d| d.get("entry_id").is_some_and(|id| *id == bad.id));
        if let Some(d) = found {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the poison request was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = letter.get("reason").cloned().unwrap_or_default();
    assert!(
        why.contains(&format!(
            "its step ended {MAX_LAPSES} times without finishing"
        )),
        "{letter:?}"
    );
    let kept = letter.get("payload").cloned().unwrap_or_default();
    assert!(
        Envelope::from_json(&kept).is_ok_and(|e| e.id == bad.id),
        "the request is kept whole: {letter:?}"
    );
    // Gone from the queue, never acted on, never reported.
    let mut conn = t.redis.conn().await;
    let queued: u64 = redis::cmd("ZCARD")
        .arg(format!("hemostat:jobs:{HOST}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(queued, 0);
    assert_eq!(status(&t.inspect(&poison).await), "exited");
    assert!(t.audited(&bad.id).await.is_empty());
    // The responder goes on.
    let since = finished_at(&t.kill(&fine).await);
    let good = t.send(&fine, Action::Restart, died()).await;
    let r = t.result(&good).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert_eq!(t.count_events(&fine, "start", since).await, 1);
    assert!(!responder.failed(), "the responder is still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_docker_restart_before_the_report() {
    killed_at(Point::AfterDockerWrite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_recording_the_intent_before_the_docker_call() {
    killed_at(Point::BeforeDockerWrite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_verifying_before_the_report() {
    killed_at(Point::BeforeReport).await;
}

// ---------------------------------------------------------------------------------------------
// A person's action wins over every action.
// ---------------------------------------------------------------------------------------------

/// A forged `start` (anyone who can write to Redis) for a container a person stopped is
/// refused by the same guards as a restart, and the refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_start_of_a_person_stopped_container_is_refused() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _responder = t.responder(&[]).await;
    let p = t.sleeper("stopped").await;
    p.cli(&["stop"]);
    let before = t
        .wait_state(&p, "exited", WAIT, |i| status(i) == "exited")
        .await;
    for problem in [None, died()] {
        let req = t.send(&p, Action::Start, problem).await;
        let r = t.result(&req).await;
        assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
        assert_eq!(r.guard, Some(Guard::Person), "{r:?}");
        let audited = t.audited(&req.id).await;
        assert_eq!(audited.len(), 1, "one audit record: {audited:?}");
    }
    let after = t.inspect(&p).await;
    assert_eq!(status(&after), "exited");
    assert_eq!(started_at(&after), started_at(&before), "never started");
}

/// A person's `docker stop` while hemostat waits for its restart to turn healthy ends the
/// remediation as `superseded`: audited, no failure, no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_stop_during_verification_supersedes_it() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _responder = t.responder(&["--verify-timeout", "30s"]).await;
    // Its first health check comes 10 s after a start: verification waits for it.
    let p = t
        .patient(
            "verify",
            PatientSpec {
                health_interval: Some(Duration::from_secs(10)),
                ..PatientSpec::watched(&["run"])
            },
        )
        .await;
    t.kill(&p).await;
    let req = t.send(&p, Action::Restart, died()).await;
    t.wait_state(&p, "restarted", WAIT, |i| status(i) == "running")
        .await;
    p.cli(&["stop"]);
    let r = t.result(&req).await;
    assert_eq!(r.outcome, Outcome::Superseded, "{r:?}");
    assert_eq!(r.guard, Some(Guard::Person), "{r:?}");
    assert_eq!(t.audited(&req.id).await.len(), 1);
    let failed = t
        .escalations(EscalationKind::RemediationFailed, Duration::from_secs(1))
        .await;
    assert!(
        failed.is_empty(),
        "no page for a person's stop: {failed:#?}"
    );
    assert_eq!(
        status(&t.inspect(&p).await),
        "exited",
        "the person's stop stands"
    );
}

/// Under real disk pressure (the monitor measures the host; its threshold is set below what
/// this machine uses), a cleanup removes an old crashed container and keeps a person-stopped
/// one and a freshly exited one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_under_disk_pressure_keeps_what_a_person_may_want() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let crash = || PatientSpec::watched(&["run", "--exit-code", "1", "--after", "0"]);
    let old = t.patient("old", crash()).await;
    let person = t.sleeper("person").await;
    person.cli(&["stop"]);
    for p in [&old, &person] {
        t.wait_state(p, "exited", WAIT, |i| status(i) == "exited")
            .await;
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    let fresh = t.patient("fresh", crash()).await;
    t.wait_state(&fresh, "exited", WAIT, |i| status(i) == "exited")
        .await;
    let _responder = t.responder(&["--cleanup-min-age", "10s"]).await;
    let _analyzer = t.analyzer().await;
    // The monitor only measures the host here: it watches none of the containers (a label no
    // container has), so none of them is reported and restarted.
    let _monitor = RunningMonitor::start(
        &t.redis.url(),
        &[
            "--scope-label",
            "hemostat.test=nobody",
            "--disk-threshold",
            "1",
        ],
    )
    .await;
    let env = t
        .results
        .wait_for(WAIT, "a cleanup", |e| {
            result_of(e).is_some_and(|r| r.action == Action::Cleanup)
        })
        .await;
    let r = result_of(&env).cloned().expect("a result");
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    let (removed, kept) = r
        .reason
        .split_once("left alone")
        .unwrap_or_else(|| panic!("{r:?}"));
    assert!(removed.contains(&old.name), "{r:?}");
    // Docker's event history may have turned over on a busy engine; then the exit code a stop
    // leaves keeps it just the same.
    assert!(
        kept.contains(&format!("{}: stopped by a person", person.name))
            || kept.contains(&format!(
                "{}: exit code 0 may be a person's stop",
                person.name
            )),
        "{r:?}"
    );
    assert!(
        kept.contains(&format!("{}: exited less than 10 s ago", fresh.name)),
        "{r:?}"
    );
    assert!(
        t.docker
            .inspect_container(&old.id, None::<InspectContainerOptions>)
            .await
            .is_err(),
        "the old crashed container is gone"
    );
    for p in [&person, &fresh] {
        assert_eq!(status(&t.inspect(p).await), "exited", "{} kept", p.name);
    }
}

// ---------------------------------------------------------------------------------------------
// A storm guard that holds, then resumes.
// ---------------------------------------------------------------------------------------------

/// Among twenty watched containers, eight turn unhealthy one after another a few seconds
/// apart: not a storm. Each is healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_unhealthy_one_after_another_among_twenty_are_all_healed() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _monitor = t.monitor(&[]).await;
    let _analyzer = t.analyzer().await;
    let _responder = t.responder(&[]).await;
    let mut sick = Vec::new();
    let mut well = Vec::new();
    for n in 0..20 {
        let spec = if n < 8 {
            // Unhealthy 4 s, 7 s, 10 s... after its start: one after another.
            let after = (4 + 3 * n).to_string();
            PatientSpec {
                health_interval: Some(Duration::from_millis(500)),
                health_retries: Some(1),
                ..PatientSpec::watched(&["run", "--unhealthy-after", &after])
            }
        } else {
            PatientSpec::watched(&["run"])
        };
        let p = t.patient(&format!("c{n}"), spec).await;
        if n < 8 {
            sick.push(p);
        } else {
            well.push(p);
        }
    }
    for p in &sick {
        let r = t
            .result_about(p, "a healing restart", Duration::from_secs(60), |r| {
                r.action == Action::Restart && r.problem == Some(ProblemKind::Unhealthy)
            })
            .await;
        assert_eq!(r.outcome, Outcome::Success, "{}: {r:?}", p.name);
        let v = r.verification.as_ref().expect("verified");
        assert_eq!(v.healthy, Some(true), "{v:?}");
    }
    let storms = t
        .escalations(
            EscalationKind::RemediationPaused,
            Duration::from_millis(200),
        )
        .await;
    assert!(storms.is_empty(), "not a storm: {storms:#?}");
}

/// Most of a host's containers die at once: a storm. Remediation is held with one escalation
/// naming them; when the storm has passed, those still down are restarted, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_storm_is_held_with_one_escalation_and_acted_on_when_it_passes() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _monitor = t.monitor(&[]).await;
    let _analyzer = t.analyzer().await;
    let _responder = t.responder(&["--storm-window", "8s"]).await;
    let mut all = Vec::new();
    for n in 0..10 {
        all.push(t.sleeper(&format!("s{n}")).await);
    }
    let victims = &all[..8];
    // All at once, as a host-wide fault would.
    let since = Utc::now();
    let ids: Vec<&str> = victims.iter().map(|p| p.id.as_str()).collect();
    let ok = Command::new("docker")
        .arg("kill")
        .args(&ids)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("docker kill");
    assert!(ok.success());
    // Held: the storm guard waits; most of them are not restarted at first.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut held = Vec::new();
    for p in victims {
        if t.count_events(p, "start", since).await == 0 {
            held.push(p.name.clone());
        }
    }
    assert!(held.len() >= 5, "only {held:?} of 8 were held");
    let storms = t
        .escalations(
            EscalationKind::RemediationPaused,
            Duration::from_millis(200),
        )
        .await;
    assert_eq!(storms.len(), 1, "one escalation: {storms:#?}");
    for name in &held {
        assert!(
            storms[0].detail.contains(name),
            "it names {name}, held: {held:?}: {storms:#?}"
        );
    }
    // Passed: every one of them is running again, each started exactly once.
    for p in victims {
        t.wait_state(p, "running again", Duration::from_secs(60), |i| {
            status(i) == "running"
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in victims {
        assert_eq!(
            t.count_events(p, "start", since).await,
            1,
            "{} started once",
            p.name
        );
    }
    let storms = t
        .escalations(
            EscalationKind::RemediationPaused,
            Duration::from_millis(200),
        )
        .await;
    assert_eq!(storms.len(), 1, "still one escalation: {storms:#?}");
}

// ---------------------------------------------------------------------------------------------
// No alert without a verdict; no failure without an alert.
// ---------------------------------------------------------------------------------------------

/// A container that crashed while the monitor was not running is reported when it starts,
/// and healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_died_while_the_monitor_was_down_is_healed_when_it_starts() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _analyzer = t.analyzer().await;
    let _responder = t.responder(&[]).await;
    let p = t.sleeper("unseen").await;
    let killed = t.kill(&p).await;
    let monitor = t.monitor(&[]).await;
    let id = p.id.clone();
    let e = t
        .health
        .wait_for(WAIT, "the death, reported at start-up", |e| {
            matches!(&e.payload, Payload::ContainerUnhealthy(a)
                if a.container.id == id && a.kind == AlertKind::Died)
        })
        .await;
    let Payload::ContainerUnhealthy(a) = &e.payload else {
        unreachable!()
    };
    assert_eq!(a.detected_by, Detection::Resync);
    let r = t
        .result_about(&p, "the restart", WAIT, |r| r.action == Action::Restart)
        .await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert!(started_at(&t.inspect(&p).await) > finished_at(&killed));
    assert!(monitor.stop().await);
}

/// On a fresh deploy the monitor may publish before the analyzer has created its consumer
/// group; that alert is still analysed and healed once the analyzer starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_published_before_the_analyzer_first_starts_is_healed() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _monitor = t.monitor(&[]).await;
    let _responder = t.responder(&[]).await;
    let p = t.sleeper("early").await;
    let killed = t.kill(&p).await;
    let id = p.id.clone();
    t.health
        .wait_for(
            WAIT,
            "the death's alert",
            |e| matches!(&e.payload, Payload::ContainerUnhealthy(a) if a.container.id == id),
        )
        .await;
    let _analyzer = t.analyzer().await;
    let r = t
        .result_about(&p, "the restart", WAIT, |r| r.action == Action::Restart)
        .await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert!(started_at(&t.inspect(&p).await) > finished_at(&killed));
}

/// hemostat's own restart of an unhealthy container is not a person's stop: no `stopped`
/// alert, no false alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hemostats_own_restart_is_not_reported_as_a_persons_stop() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let _monitor = t.monitor(&[]).await;
    let _analyzer = t.analyzer().await;
    let _responder = t.responder(&[]).await;
    let p = t
        .patient(
            "sick",
            PatientSpec {
                health_interval: Some(Duration::from_millis(500)),
                health_retries: Some(1),
                ..PatientSpec::watched(&["run", "--unhealthy-after", "2"])
            },
        )
        .await;
    let r = t
        .result_about(&p, "the restart", WAIT, |r| r.action == Action::Restart)
        .await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    let name = p.name.clone();
    let stops = t
        .health
        .collect_for(Duration::from_secs(3), |e| {
            matches!(&e.payload, Payload::ContainerUserAction(a)
                if a.container.name == name && a.kind == AlertKind::Stopped)
        })
        .await;
    assert!(stops.is_empty(), "{stops:#?}");
    let mut false_alarms = StreamReader::new(&t.redis, Channel::FalseAlarm);
    let name = p.name.clone();
    let fa = false_alarms
        .collect_for(Duration::from_millis(500), |e| {
            matches!(&e.payload, Payload::FalseAlarm(f)
                if f.container.as_ref().is_some_and(|c| c.name == name))
        })
        .await;
    assert!(fa.is_empty(), "{fa:#?}");
}

/// A responder SIGKILLed while a proposal waits for a person: its successor finds the
/// proposal (it proposes nothing twice), acts on the approval once, and the container is
/// started exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_killed_while_a_proposal_waits_leaves_one_proposal_and_one_restart() {
    let Some(mut t) = Trial::start().await else {
        return;
    };
    let doomed = t.killable(&["--mode", "approve"], None).await;
    let p = t.sleeper("propose-kill9").await;
    let killed = t.kill(&p).await;
    let since = finished_at(&killed);
    let req = t.send(&p, Action::Restart, died()).await;
    let id = req.id.clone();
    t.alerts
        .wait_for(WAIT, "the proposal", |e| {
            escalation_of(e).is_some_and(|x| x.proposal.as_ref().is_some_and(|pr| pr.id == id))
        })
        .await;
    doomed.kill();
    let _successor = t.killable(&["--mode", "approve"], None).await;
    // The successor judges it again (the lease lapses) and finds it proposed already.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut conn = t.redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(hemostat_common::events::proposals::decision(HOST, &req.id))
        .arg("approved:test")
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = t.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert_eq!(
        t.count_events(&p, "start", since).await,
        1,
        "started exactly once"
    );
    assert_eq!(t.audited(&req.id).await.len(), 1, "one audited result");
    let audit = records::audit(&t.redis.client()).await;
    let proposed = audit
        .iter()
        .filter_map(escalation_of)
        .filter(|x| x.kind == EscalationKind::ApprovalNeeded)
        .count();
    assert_eq!(proposed, 1, "one proposal in the audit stream");
    let mut all = StreamReader::new(&t.redis, Channel::Alerts);
    let on_the_bus = all
        .collect_for(Duration::from_millis(300), |e| {
            escalation_of(e).is_some_and(|x| x.kind == EscalationKind::ApprovalNeeded)
        })
        .await;
    assert_eq!(
        on_the_bus.len(),
        1,
        "one proposal on hemostat:alerts: {on_the_bus:#?}"
    );
}
