//! The responder against a real redis-server and the real Docker engine: requests go in on
//! `hemostat:stream:remediation_needed` as the analyzer would publish them, patient containers
//! are really restarted (or really left alone), and every decision is read back from
//! `remediation_complete`, `alerts` and the audit stream.
//!
//! Each test's responder has only that test's containers in scope (`HEMOSTAT_SCOPE_LABEL`), so
//! one test's storm or cleanup never sees another's. The one test that floods Docker's event
//! history takes the host to itself ([`HOST_WIDE`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, StartContainerOptions,
};
use chrono::{DateTime, Utc};
use hemostat_common::bus::Bus;
use hemostat_common::events::{
    Action, AnalysisMethod, Channel, ContainerRef, Envelope, Escalation, EscalationKind, Guard,
    Outcome, Payload, Problem, ProblemKind, RemediationRequest, RemediationResult, Severity,
};
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::shutdown::Shutdown;
use hemostat_responder::Responder;
use hemostat_tests::pipeline::RunningResponder;
use hemostat_tests::records::{
    self, created_at, engine_to_ourselves, escalation_of, exit_code, finished_at,
    foreign_responders, health, result_of, started_at, status,
};
use hemostat_tests::{
    PATIENT_IMAGE, Patient, PatientSpec, StreamReader, TestRedis, docker, ensure_patient_image,
    init_logs, random_id,
};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

const WAIT: Duration = Duration::from_secs(30);
const HOST: &str = hemostat_tests::pipeline::HOST;
/// The responder's consumer group on this host.
const GROUP: &str = hemostat_tests::pipeline::RESPONDER_GROUP;

/// Held shared by every test, and exclusively by the test that floods Docker's event history
/// (which would push other tests' `stop` events out of it).
static HOST_WIDE: RwLock<()> = RwLock::const_new(());

/// Whose turn it is on the Docker host.
enum Turn {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// Everything one test owns: its Redis, a responder, a publisher, readers and a name prefix.
/// Declared before the test's containers, so it is dropped after them (and the host-wide turn
/// is released only once they are gone).
struct World {
    responder: Option<RunningResponder>,
    redis: TestRedis,
    docker: Docker,
    bus: Bus,
    prefix: String,
    results: StreamReader,
    alerts: StreamReader,
    _turn: Turn,
}

impl World {
    /// A world sharing the Docker host with the other tests, or `None` (skip outside CI).
    async fn start(extra: &[&str]) -> Option<World> {
        let turn = Turn::Shared(HOST_WIDE.read().await);
        Self::begin(turn, extra).await
    }

    /// A world with the Docker host to itself (no other test of this file runs meanwhile).
    async fn start_alone(extra: &[&str]) -> Option<World> {
        let turn = Turn::Alone(HOST_WIDE.write().await);
        Self::begin(turn, extra).await
    }

    async fn begin(turn: Turn, extra: &[&str]) -> Option<World> {
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
        // Only this test's containers are in scope: other tests' failures never count toward
        // this one's storm guard, and its cleanup never touches theirs.
        let prefix = format!("hstest-{}", random_id());
        let scope = format!("hemostat.test={prefix}");
        let mut args = vec!["--scope-label", scope.as_str()];
        args.extend_from_slice(extra);
        let responder = RunningResponder::start(&redis.url(), &args).await;
        Some(World {
            responder: Some(responder),
            results: StreamReader::new(&redis, Channel::RemediationComplete),
            alerts: StreamReader::new(&redis, Channel::Alerts),
            redis,
            docker,
            bus,
            prefix,
            _turn: turn,
        })
    }

    fn responder(&self) -> &Responder {
        &self
            .responder
            .as_ref()
            .expect("responder running")
            .responder
    }

    /// Stops the responder and checks it stopped cleanly.
    async fn stop(mut self) {
        let r = self.responder.take().expect("responder running");
        assert!(r.stop().await, "the responder did not stop cleanly");
    }

    // --- requests and what comes back ---

    fn request(&self, target: Option<&Patient>, action: Action, host: &str) -> Envelope {
        self.request_for(target, action, host, None)
    }

    /// A request that names the problem it answers.
    fn request_for(
        &self,
        target: Option<&Patient>,
        action: Action,
        host: &str,
        problem: Option<Problem>,
    ) -> Envelope {
        Envelope::new(
            "analyzer",
            HOST,
            Payload::RemediationNeeded(RemediationRequest {
                requested_by: None,
                container: target.map(container_ref),
                target_host: host.into(),
                action,
                root_cause: "test: the container needs help".into(),
                reason: "integration test request".into(),
                confidence: 0.9,
                analysis_method: AnalysisMethod::Rules,
                fallback_reason: None,
                alert_id: format!("alert-{}", random_id()),
                problem,
            }),
        )
    }

    async fn publish(&self, env: &Envelope) {
        self.bus.publish(env).await.expect("publish");
    }

    /// Publishes a request for this host and returns it.
    async fn send(&self, target: Option<&Patient>, action: Action) -> Envelope {
        let env = self.request(target, action, HOST);
        self.publish(&env).await;
        env
    }

    /// Publishes a cleanup answering disk pressure over 90 %, and then, as the monitor would,
    /// a host sample taken after it with the disk at `disk_percent`.
    async fn send_cleanup(&self, disk_percent: f64) -> Envelope {
        let env = Envelope::new(
            "analyzer",
            HOST,
            Payload::RemediationNeeded(RemediationRequest {
                requested_by: None,
                container: None,
                target_host: HOST.into(),
                action: Action::Cleanup,
                root_cause: "the host's disk is nearly full".into(),
                reason: "rule disk_pressure".into(),
                confidence: 0.8,
                analysis_method: AnalysisMethod::Rules,
                fallback_reason: None,
                alert_id: format!("alert-{}", random_id()),
                problem: Some(Problem {
                    metric: Some("disk_percent".into()),
                    threshold: Some(90.0),
                    ..Problem::new(ProblemKind::DiskPressure)
                }),
            }),
        );
        self.publish(&env).await;
        let sample = Envelope::new(
            "monitor",
            HOST,
            Payload::HostMetrics(hemostat_common::events::HostSample {
                disk_percent,
                ..Default::default()
            }),
        );
        self.publish(&sample).await;
        env
    }

    /// Publishes a request naming `problem` and returns it.
    async fn send_for(&self, target: &Patient, action: Action, problem: Problem) -> Envelope {
        let env = self.request_for(Some(target), action, HOST, Some(problem));
        self.publish(&env).await;
        env
    }

    /// Waits for the result of `req`: the envelope and its payload.
    async fn result(&mut self, req: &Envelope) -> (Envelope, RemediationResult) {
        let id = req.id.clone();
        let env = self
            .results
            .wait_for(WAIT, &format!("remediation_complete for {id}"), |e| {
                result_of(e).is_some_and(|r| r.request_id == id)
            })
            .await;
        let r = result_of(&env).cloned().expect("a result");
        (env, r)
    }

    /// Every result for `req` seen after reading for `d` more.
    async fn results_for(&mut self, req: &Envelope, d: Duration) -> Vec<RemediationResult> {
        let id = req.id.clone();
        self.results
            .collect_for(d, |e| result_of(e).is_some_and(|r| r.request_id == id))
            .await
            .iter()
            .filter_map(result_of)
            .cloned()
            .collect()
    }

    /// Every escalation of `kind` seen after reading for `d` more.
    async fn escalations(&mut self, kind: EscalationKind, d: Duration) -> Vec<Escalation> {
        self.alerts
            .collect_for(d, |e| escalation_of(e).is_some_and(|x| x.kind == kind))
            .await
            .iter()
            .filter_map(escalation_of)
            .cloned()
            .collect()
    }

    /// The audit stream, oldest first.
    async fn audit(&self) -> Vec<Envelope> {
        records::audit(&self.redis.client()).await
    }

    /// Waits until the responder has read and acknowledged everything on its stream: after
    /// that, anything it was going to say about those requests has been published.
    async fn drained(&self) {
        let mut conn = self.redis.conn().await;
        let stream = Channel::RemediationNeeded.stream();
        let deadline = Instant::now() + WAIT;
        loop {
            let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .expect("XREVRANGE");
            let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut conn)
                .await
                .expect("XINFO GROUPS");
            let g = groups
                .groups
                .iter()
                .find(|g| g.name == GROUP)
                .expect("group");
            if g.pending == 0
                && last
                    .ids
                    .first()
                    .is_some_and(|e| e.id == g.last_delivered_id)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the responder never drained its stream"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // --- containers ---

    async fn patient(&self, suffix: &str, spec: PatientSpec) -> Patient {
        Patient::start(&self.docker, &self.prefix, suffix, spec).await
    }

    /// A patient with `labels` that exited with code 1 by itself (it does again 0.5 s after
    /// every start); returns it with its exited state.
    async fn crashed(
        &self,
        suffix: &str,
        labels: HashMap<String, String>,
    ) -> (Patient, ContainerInspectResponse) {
        let spec = PatientSpec {
            args: args(&["run", "--exit-code", "1", "--after", "0.5"]),
            labels,
            ..PatientSpec::default()
        };
        let p = self.patient(suffix, spec).await;
        let i = self
            .wait_state(&p, "exited", |i| status(i) == "exited")
            .await;
        assert_eq!(exit_code(&i), 1, "{} exited with code 1", p.name);
        (p, i)
    }

    /// A watched patient that would run forever, killed (SIGKILL, no `stop` event: a failure,
    /// not a person's stop); a restart brings it back for good.
    async fn killed(&self, suffix: &str) -> (Patient, ContainerInspectResponse) {
        let p = self.patient(suffix, PatientSpec::watched(&["run"])).await;
        p.cli(&["kill"]);
        let i = self
            .wait_state(&p, "exited", |i| status(i) == "exited")
            .await;
        (p, i)
    }

    /// A container created from `body` (image, name and test label filled in), started if
    /// `start`; removed on drop like any patient.
    async fn raw(&self, suffix: &str, mut body: ContainerCreateBody, start: bool) -> Patient {
        let name = format!("{}-{suffix}", self.prefix);
        body.image = Some(PATIENT_IMAGE.into());
        body.labels
            .get_or_insert_with(HashMap::new)
            .insert("hemostat.test".into(), self.prefix.clone());
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .expect("create container");
        let p = Patient {
            id: created.id,
            name,
        };
        if start {
            self.docker
                .start_container(&p.id, None::<StartContainerOptions>)
                .await
                .expect("start container");
        }
        p
    }

    async fn inspect(&self, p: &Patient) -> ContainerInspectResponse {
        self.docker
            .inspect_container(&p.id, None::<InspectContainerOptions>)
            .await
            .unwrap_or_else(|e| panic!("inspect {}: {e}", p.name))
    }

    async fn exists(&self, p: &Patient) -> bool {
        self.docker
            .inspect_container(&p.id, None::<InspectContainerOptions>)
            .await
            .is_ok()
    }

    /// Polls inspect until `pred` holds.
    async fn wait_state(
        &self,
        p: &Patient,
        what: &str,
        pred: impl Fn(&ContainerInspectResponse) -> bool,
    ) -> ContainerInspectResponse {
        let deadline = Instant::now() + WAIT;
        loop {
            let i = self.inspect(p).await;
            if pred(&i) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became {what}: {:?}",
                p.name,
                i.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that `p` is in the same state as `before`: same status, never started since.
    async fn assert_untouched(&self, p: &Patient, before: &ContainerInspectResponse) {
        let now = self.inspect(p).await;
        assert_eq!(
            status(&now),
            status(before),
            "{} changed state{}",
            p.name,
            interference()
        );
        assert_eq!(
            started_at(&now),
            started_at(before),
            "{} was started again{}",
            p.name,
            interference()
        );
        assert_eq!(
            finished_at(&now),
            finished_at(before),
            "{} was stopped or started{}",
            p.name,
            interference()
        );
    }

    /// Docker's own record: how many `action` events `p` had since `since`.
    async fn count_events(&self, p: &Patient, action: &str, since: DateTime<Utc>) -> usize {
        records::count_events(&self.docker, &p.id, action, since).await
    }
}

// --- small helpers ---

/// A problem that holds for a running container: something it depends on was restarted just
/// now (the request a parent's restart queues). For tests that restart a healthy container.
fn parent_restarted() -> Problem {
    Problem {
        since: Some(Utc::now()),
        parent: Some("a test".into()),
        ..Problem::new(ProblemKind::DependencyRestarted)
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `hemostat.enable=true` plus `extra`.
fn watched(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut l = labels(extra);
    l.insert("hemostat.enable".into(), "true".into());
    l
}

fn container_ref(p: &Patient) -> ContainerRef {
    ContainerRef {
        id: p.id.clone(),
        name: p.name.clone(),
        image: PATIENT_IMAGE.into(),
        labels: BTreeMap::new(),
    }
}

fn about(x: &Escalation, p: &Patient) -> bool {
    x.container.as_ref().is_some_and(|c| c.name == p.name)
}

/// For failure messages: whether another responder may have acted meanwhile.
fn interference() -> String {
    match foreign_responders() {
        f if f.is_empty() => String::new(),
        f => format!(" (another hemostat responder is running on this engine: {f})"),
    }
}

/// Removes a Docker volume when dropped.
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// --- the tests ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_verified() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    // Exits with code 1 three seconds after each start: long enough to see it running again.
    let p = w
        .patient(
            "crash",
            PatientSpec::watched(&["run", "--exit-code", "1", "--after", "3"]),
        )
        .await;
    let before = w.wait_state(&p, "exited", |i| status(i) == "exited").await;
    assert_eq!(exit_code(&before), 1);

    let req = w.send(Some(&p), Action::Restart).await;
    let (env, r) = w.result(&req).await;
    let after = w.inspect(&p).await;

    assert_eq!(r.action, Action::Restart);
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert!(!r.dry_run);
    assert!(r.duration_ms > 0, "{r:?}");
    assert_eq!(
        r.container.as_ref().map(|c| c.name.as_str()),
        Some(p.name.as_str())
    );
    let v = r.verification.as_ref().expect("a verification");
    assert!(v.running, "{v:?}");
    assert_eq!(v.healthy, None, "no health check: {v:?}");
    assert_eq!(status(&after), "running", "{:?}", after.state);
    assert!(started_at(&after) > finished_at(&before), "started again");

    let audit = w.audit().await;
    assert_eq!(
        audit.iter().filter(|e| **e == env).count(),
        1,
        "the very envelope is in the audit stream once: {audit:#?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_restart_verified_healthy() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    // Healthy for 3 s after each start, then failing its health check.
    let spec = PatientSpec {
        health_interval: Some(Duration::from_millis(500)),
        health_retries: Some(1),
        ..PatientSpec::watched(&["run", "--unhealthy-after", "3"])
    };
    let p = w.patient("sick", spec).await;
    let sick = w
        .wait_state(&p, "unhealthy", |i| {
            health(i).as_deref() == Some("unhealthy")
        })
        .await;

    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    let v = r.verification.as_ref().expect("a verification");
    assert!(v.running, "{v:?}");
    assert_eq!(v.healthy, Some(true), "waited for the health check: {v:?}");
    let after = w.inspect(&p).await;
    assert_eq!(status(&after), "running");
    assert!(started_at(&after) > started_at(&sick), "restarted");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_rejected() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (p, before) = w
        .crashed("protected", watched(&[("hemostat.protect", "true")]))
        .await;

    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert!(r.reason.contains("protected"), "{r:?}");
    assert!(r.verification.is_none());

    let name = p.name.clone();
    let esc = w
        .alerts
        .wait_for(WAIT, "a protected_container escalation", |e| {
            escalation_of(e).is_some_and(|x| {
                x.kind == EscalationKind::ProtectedContainer
                    && x.container.as_ref().is_some_and(|c| c.name == name)
            })
        })
        .await;
    let esc = escalation_of(&esc).expect("escalation");
    assert_eq!(esc.severity, Severity::Critical);
    w.assert_untouched(&p, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_out_rejected() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (out, out_before) = w
        .crashed("optout", labels(&[("hemostat.enable", "false")]))
        .await;
    let (stray, stray_before) = w.crashed("unlabelled", HashMap::new()).await;

    let req = w.send(Some(&out), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert!(r.reason.contains("opted out"), "{r:?}");

    let req = w.send(Some(&stray), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert!(r.reason.contains("not in scope"), "{r:?}");

    w.assert_untouched(&out, &out_before).await;
    w.assert_untouched(&stray, &stray_before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_stop_skipped() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let p = w.patient("stopped", PatientSpec::watched(&["run"])).await;
    p.cli(&["stop"]);
    let before = w.wait_state(&p, "exited", |i| status(i) == "exited").await;

    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert!(r.reason.contains("person"), "{r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.assert_untouched(&p, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_on_a_stopped_container_is_prompt() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let p = w.patient("prompt", PatientSpec::watched(&["run"])).await;
    p.cli(&["stop"]);
    w.wait_state(&p, "exited", |i| status(i) == "exited").await;
    // Just after a second boundary: the worst case of rounding up to the next second.
    while !(20..120).contains(&Utc::now().timestamp_subsec_millis()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    // An inspect and a look at Docker's event history: tens of milliseconds.
    assert!(r.duration_ms < 500, "{r:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_stop_remembered_after_busy_engine() {
    // Alone: the burst of events below would push other tests' `stop` events out too.
    let Some(mut w) = World::start_alone(&[]).await else {
        return;
    };
    let p = w.patient("stopped", PatientSpec::watched(&["run"])).await;
    p.cli(&["stop"]);
    let before = w.wait_state(&p, "exited", |i| status(i) == "exited").await;
    // What the monitor publishes when it sees the stop (no monitor runs in this file).
    let stopped = Envelope::new(
        "monitor",
        HOST,
        Payload::ContainerUserAction(hemostat_common::events::ContainerAlert {
            container: ContainerRef {
                id: p.id.clone(),
                name: p.name.clone(),
                ..ContainerRef::default()
            },
            kind: hemostat_common::events::AlertKind::Stopped,
            severity: Severity::Info,
            user_initiated: true,
            reminder: false,
            detected_by: hemostat_common::events::Detection::Event,
            summary: "stopped by a person".into(),
            state: None,
            metrics: None,
            breach: None,
            since: None,
            docker_event_time: None,
            protected: false,
            logs: None,
        }),
    );
    w.publish(&stopped).await;
    // An engine going about its business: 300 events elsewhere (health checks alone make
    // several per check: a few minutes' worth on a busy host).
    let noise = w
        .patient(
            "noise",
            PatientSpec {
                args: args(&["run"]),
                ..PatientSpec::default()
            },
        )
        .await;
    for _ in 0..300 {
        w.docker
            .create_exec(
                &noise.id,
                bollard::models::ExecConfig {
                    cmd: Some(args(&["/patient", "probe"])),
                    ..Default::default()
                },
            )
            .await
            .expect("exec_create");
    }
    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Skipped, "a person's stop wins: {r:?}");
    w.assert_untouched(&p, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_skipped() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let p = w.patient("paused", PatientSpec::watched(&["run"])).await;
    p.cli(&["pause"]);
    let before = w.wait_state(&p, "paused", |i| status(i) == "paused").await;

    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert!(r.reason.contains("paused"), "{r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.assert_untouched(&p, &before).await;
    p.cli(&["unpause"]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backoff_and_breaker() {
    let Some(mut w) = World::start(&[
        "--backoff-initial",
        "1s",
        "--backoff-max",
        "4s",
        "--breaker-threshold",
        "3",
        "--breaker-window",
        "10m",
        // It dies 0.3 s after every start: a missed "running" must not cost 20 s.
        "--verify-timeout",
        "3s",
    ])
    .await
    else {
        return;
    };
    let spec = PatientSpec::watched(&["run", "--exit-code", "1", "--after", "0.3"]);
    let p = w.patient("loop", spec).await;
    let mut last = w.wait_state(&p, "exited", |i| status(i) == "exited").await;

    // Three remediations, each requested once the previous one was reported and the
    // container had died again, as in a real crash loop.
    let mut starts = Vec::new();
    for n in 1..=3 {
        let req = w.send(Some(&p), Action::Restart).await;
        let (_, r) = w.result(&req).await;
        assert!(
            matches!(r.outcome, Outcome::Success | Outcome::Failed),
            "request {n} must be acted on: {r:?}"
        );
        assert!(r.verification.is_some(), "request {n}: {r:?}");
        let i = w.inspect(&p).await;
        assert!(
            started_at(&i) > started_at(&last),
            "request {n} started it again"
        );
        starts.push(started_at(&i));
        last = w
            .wait_state(&p, "exited again", |i| status(i) == "exited")
            .await;
    }
    // The gaps between the actions follow the backoff: 1 s, then 2 s. Measured between the
    // container's starts, so each gap carries the difference of two Docker start latencies
    // (0.2-0.4 s here): hence the slack.
    let gap1 = (starts[1] - starts[0]).to_std().unwrap();
    let gap2 = (starts[2] - starts[1]).to_std().unwrap();
    assert!(
        gap1 >= Duration::from_millis(600),
        "first backoff {gap1:?}{}",
        interference()
    );
    assert!(
        gap2 >= Duration::from_millis(1500),
        "second backoff {gap2:?}{}",
        interference()
    );
    assert!(
        gap2 >= gap1 + Duration::from_millis(300),
        "the backoff grows: {gap1:?} then {gap2:?}{}",
        interference()
    );

    // The fourth would exceed the budget: the breaker opens.
    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert!(r.reason.contains("circuit breaker opened"), "{r:?}");
    // The fifth finds it open.
    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert!(r.reason.contains("circuit breaker open"), "{r:?}");
    w.assert_untouched(&p, &last).await;

    let opened: Vec<_> = w
        .escalations(
            EscalationKind::CircuitBreakerOpen,
            Duration::from_millis(500),
        )
        .await
        .into_iter()
        .filter(|x| about(x, &p))
        .collect();
    assert_eq!(opened.len(), 1, "exactly one escalation: {opened:#?}");
    assert_eq!(opened[0].severity, Severity::Critical);

    // A person resets it: the next request is acted on again.
    let removed = hemostat_responder::reset_breaker(&w.bus, HOST, &p.name)
        .await
        .expect("reset");
    assert!(removed >= 1, "the breaker key was there");
    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert!(
        matches!(r.outcome, Outcome::Success | Outcome::Failed),
        "acted on after the reset: {r:?}"
    );
    let i = w.inspect(&p).await;
    assert!(started_at(&i) > starts[2], "started again after the reset");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_stop_during_backoff_wins() {
    let Some(mut w) = World::start(&["--backoff-initial", "4s", "--backoff-max", "8s"]).await
    else {
        return;
    };
    let p = w.patient("backoff", PatientSpec::watched(&["run"])).await;
    // A first remediation, so that the next one has to wait 4 s.
    let req = w.send_for(&p, Action::Restart, parent_restarted()).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    let req = w.send_for(&p, Action::Restart, parent_restarted()).await;
    // While the request waits out the backoff, a person stops the container.
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.cli(&["stop"]);
    let stopped = w.wait_state(&p, "exited", |i| status(i) == "exited").await;
    let (_, r) = w.result(&req).await;
    assert!(
        r.duration_ms >= 2_000,
        "the request was decided after the backoff wait, not before the stop: {r:?}"
    );
    assert_eq!(r.outcome, Outcome::Skipped, "a person's stop wins: {r:?}");
    assert_eq!(r.guard, Some(Guard::Person), "{r:?}");
    w.assert_untouched(&p, &stopped).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_container_rejected() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (p, _) = w.crashed("gone", watched(&[])).await;
    let env = w.request(Some(&p), Action::Restart, HOST);
    let status = Command::new("docker")
        .args(["rm", "-f", &p.id])
        .stdout(Stdio::null())
        .status()
        .expect("docker rm");
    assert!(status.success());
    w.publish(&env).await;
    let (_, r) = w.result(&env).await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert!(r.reason.contains("not found"), "{r:?}");
    assert!(!w.exists(&p).await, "nothing recreated it");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_message_one_restart() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (p, before) = w.killed("dup").await;
    let req = w.request(Some(&p), Action::Restart, HOST);
    w.publish(&req).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");

    // The same envelope again (a redelivery, or a publisher's retry).
    w.publish(&req).await;
    w.drained().await;
    let all = w.results_for(&req, Duration::from_millis(500)).await;
    assert_eq!(all.len(), 1, "one result per request id: {all:#?}");
    let audited = w
        .audit()
        .await
        .iter()
        .filter(|e| result_of(e).is_some_and(|r| r.request_id == req.id))
        .count();
    assert_eq!(audited, 1);
    assert_eq!(
        w.count_events(&p, "start", created_at(&before)).await,
        2,
        "started once by its creator and once by the responder{}",
        interference()
    );
    assert_eq!(status(&w.inspect(&p).await), "running");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_read_together_reports_what_was_done() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (p, before) = w.killed("dup2").await;
    let req = w.request(Some(&p), Action::Restart, HOST);
    // Two copies in one transaction: the responder reads them in one batch and handles them
    // at the same time.
    w.bus
        .publish_all(&[req.clone(), req.clone()])
        .await
        .expect("publish");
    let (_, r) = w.result(&req).await;
    w.drained().await;
    let all = w.results_for(&req, Duration::from_millis(500)).await;
    assert_eq!(all.len(), 1, "one result per request id: {all:#?}");
    assert_eq!(
        w.count_events(&p, "start", created_at(&before)).await,
        2,
        "restarted exactly once{}",
        interference()
    );
    // The one report must tell what happened: it was restarted.
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert!(r.verification.is_some(), "{r:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_full_report_no_change() {
    let Some(mut w) = World::start(&["--dry-run", "true"]).await else {
        return;
    };
    let (p, before) = w.crashed("dry", watched(&[])).await;
    let req = w.send(Some(&p), Action::Restart).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert!(r.dry_run, "{r:?}");
    assert!(r.reason.starts_with("dry run"), "{r:?}");
    assert!(r.reason.contains(&p.name), "names the container: {r:?}");
    assert!(r.verification.is_none(), "{r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.assert_untouched(&p, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_only_old_failures_and_keeps_volumes() {
    let Some(mut w) = World::start(&["--cleanup-min-age", "3s"]).await else {
        return;
    };
    let crash_now = args(&["run", "--exit-code", "1", "--after", "0"]);
    // In scope, crashed, with an anonymous volume: the one thing to remove.
    let gone = w
        .raw(
            "vol",
            ContainerCreateBody {
                cmd: Some(crash_now.clone()),
                labels: Some(watched(&[])),
                volumes: Some(vec!["/data".into()]),
                ..ContainerCreateBody::default()
            },
            true,
        )
        .await;
    let exited = |a: &[String], l| PatientSpec {
        args: a.to_vec(),
        labels: l,
        ..PatientSpec::default()
    };
    let stray = w
        .patient("unlabelled", exited(&crash_now, HashMap::new()))
        .await;
    let out = w
        .patient(
            "optout",
            exited(&crash_now, labels(&[("hemostat.enable", "false")])),
        )
        .await;
    let prot = w
        .patient(
            "protected",
            exited(&crash_now, watched(&[("hemostat.protect", "true")])),
        )
        .await;
    let clean = w
        .patient(
            "clean",
            exited(
                &args(&["run", "--exit-code", "0", "--after", "0"]),
                watched(&[]),
            ),
        )
        .await;
    let person = w.patient("person", PatientSpec::watched(&["run"])).await;
    person.cli(&["stop"]);
    let running = w.patient("running", PatientSpec::watched(&["run"])).await;
    for p in [&gone, &stray, &out, &prot, &clean, &person] {
        w.wait_state(p, "exited", |i| status(i) == "exited").await;
    }
    // Older than the 3 s minimum age by now; one more that is not.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let fresh = w.patient("fresh", exited(&crash_now, watched(&[]))).await;
    w.wait_state(&fresh, "exited", |i| status(i) == "exited")
        .await;
    let volume = w
        .inspect(&gone)
        .await
        .mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some("/data"))
        .and_then(|m| m.name)
        .expect("an anonymous volume on /data");
    let _volume = VolumeGuard(volume.clone());

    let req = w.send_cleanup(99.0).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert_eq!(r.action, Action::Cleanup);
    assert!(r.container.is_none());
    let (removed, left) = r
        .reason
        .split_once("left alone")
        .unwrap_or_else(|| panic!("the reason lists what was left: {r:?}"));
    assert!(removed.contains(&gone.name), "{r:?}");
    assert!(removed.contains("volumes kept"), "{r:?}");
    for (p, why) in [
        (&stray, "not in scope"),
        (&out, "not in scope"),
        (&prot, "protected"),
        (&clean, "exit code 0"),
        (&person, "stopped by a person"),
        (&fresh, "exited less than 3 s ago"),
    ] {
        assert!(
            left.contains(&format!("{}: {why}", p.name)),
            "{} left alone because {why}: {r:?}",
            p.name
        );
        assert!(!removed.contains(&p.name), "{} not removed: {r:?}", p.name);
        assert_eq!(status(&w.inspect(p).await), "exited", "{} kept", p.name);
    }
    assert!(!r.reason.contains(&running.name), "{r:?}");
    assert!(!w.exists(&gone).await, "the old crashed container is gone");
    assert_eq!(status(&w.inspect(&running).await), "running");
    w.docker
        .inspect_volume(&volume)
        .await
        .unwrap_or_else(|e| panic!("the anonymous volume {volume} was kept: {e}"));

    // At most one cleanup per cooldown, however hard the disk presses.
    let again = w.send_cleanup(99.0).await;
    let (_, r) = w.result(&again).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert_eq!(r.guard, Some(Guard::Cooldown), "{r:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_needs_pressure_that_still_holds() {
    let Some(mut w) = World::start(&["--cleanup-min-age", "1s"]).await else {
        return;
    };
    let (old, before) = w.crashed("old", watched(&[])).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The disk is back under its threshold by the time the responder looks.
    let req = w.send_cleanup(42.0).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert_eq!(r.guard, Some(Guard::Problem), "{r:?}");
    assert!(r.reason.contains("under the 90.0 threshold"), "{r:?}");
    // A cleanup that names no pressure at all.
    let bare = w.send(None, Action::Cleanup).await;
    let (_, r) = w.result(&bare).await;
    assert_eq!(
        (r.outcome, r.guard),
        (Outcome::Skipped, Some(Guard::Problem)),
        "{r:?}"
    );
    w.assert_untouched(&old, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_restarted_after_parent() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let parent = w.patient("parent", PatientSpec::watched(&["run"])).await;
    let netns = w
        .raw(
            "netns",
            ContainerCreateBody {
                cmd: Some(args(&["run"])),
                labels: Some(watched(&[])),
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{}", parent.id)),
                    ..HostConfig::default()
                }),
                ..ContainerCreateBody::default()
            },
            true,
        )
        .await;
    let declared = w
        .patient(
            "declared",
            PatientSpec {
                args: args(&["run"]),
                labels: watched(&[("hemostat.depends_on", &parent.name)]),
                ..PatientSpec::default()
            },
        )
        .await;
    let netns_before = w.inspect(&netns).await;
    let declared_before = w.inspect(&declared).await;
    parent.cli(&["kill"]);
    w.wait_state(&parent, "exited", |i| status(i) == "exited")
        .await;

    let req = w
        .send_for(&parent, Action::Restart, Problem::new(ProblemKind::Died))
        .await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert!(r.reason.contains("dependents queued"), "{r:?}");
    let parent_started = started_at(&w.inspect(&parent).await);
    for (dep, before) in [(&netns, &netns_before), (&declared, &declared_before)] {
        assert!(r.reason.contains(&dep.name), "{} listed: {r:?}", dep.name);
        // Each dependent is a request of its own, with its own report.
        let name = dep.name.clone();
        let env = w
            .results
            .wait_for(WAIT, &format!("the report on {name}"), |e| {
                result_of(e).is_some_and(|r| {
                    r.container.as_ref().is_some_and(|c| c.name == name)
                        && r.problem == Some(ProblemKind::DependencyRestarted)
                })
            })
            .await;
        let dr = result_of(&env).expect("a result");
        assert_eq!(dr.outcome, Outcome::Success, "{dr:?}");
        let i = w.inspect(dep).await;
        assert_eq!(status(&i), "running", "{}", dep.name);
        assert!(
            started_at(&i) > started_at(before),
            "{} restarted",
            dep.name
        );
        assert!(
            started_at(&i) > parent_started,
            "{} restarted after its parent",
            dep.name
        );
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_get_the_same_safety_checks() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let parent = w.patient("parent", PatientSpec::watched(&["run"])).await;
    // Opted out, though it declares the dependency.
    let optout = w
        .patient(
            "optout",
            PatientSpec {
                args: args(&["run"]),
                labels: labels(&[
                    ("hemostat.enable", "false"),
                    ("hemostat.depends_on", &parent.name),
                ]),
                ..PatientSpec::default()
            },
        )
        .await;
    // Not in scope at all, sharing the parent's network namespace.
    let stray = w
        .raw(
            "netns",
            ContainerCreateBody {
                cmd: Some(args(&["run"])),
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{}", parent.id)),
                    ..HostConfig::default()
                }),
                ..ContainerCreateBody::default()
            },
            true,
        )
        .await;
    // In scope, but a person stopped it.
    let stopped = w
        .patient(
            "stopped",
            PatientSpec {
                args: args(&["run"]),
                labels: watched(&[("hemostat.depends_on", &parent.name)]),
                ..PatientSpec::default()
            },
        )
        .await;
    stopped.cli(&["stop"]);
    let stopped_before = w
        .wait_state(&stopped, "exited", |i| status(i) == "exited")
        .await;
    // Protected: alert only.
    let prot = w
        .patient(
            "protected",
            PatientSpec {
                args: args(&["run"]),
                labels: watched(&[
                    ("hemostat.depends_on", &parent.name),
                    ("hemostat.protect", "true"),
                ]),
                ..PatientSpec::default()
            },
        )
        .await;
    let optout_before = w.inspect(&optout).await;
    let stray_before = w.inspect(&stray).await;
    let prot_before = w.inspect(&prot).await;

    let req = w
        .send_for(&parent, Action::Restart, parent_restarted())
        .await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    // Out of scope: named and left alone, never queued.
    let (queued, outside) = r
        .reason
        .split_once("not in scope")
        .unwrap_or_else(|| panic!("{r:?}"));
    for dep in [&optout, &stray] {
        assert!(
            outside.contains(&dep.name),
            "{} left alone: {r:?}",
            dep.name
        );
    }
    for dep in [&stopped, &prot] {
        assert!(queued.contains(&dep.name), "{} queued: {r:?}", dep.name);
    }
    // The queued ones pass the same guards as any request: a person's stop wins, protection
    // refuses and escalates.
    for (dep, outcome, guard) in [
        (&stopped, Outcome::Skipped, Guard::Person),
        (&prot, Outcome::Rejected, Guard::Protection),
    ] {
        let name = dep.name.clone();
        let env = w
            .results
            .wait_for(WAIT, &format!("the report on {name}"), |e| {
                result_of(e).is_some_and(|r| r.container.as_ref().is_some_and(|c| c.name == name))
            })
            .await;
        let dr = result_of(&env).expect("a result");
        assert_eq!((dr.outcome, dr.guard), (outcome, Some(guard)), "{dr:?}");
    }
    w.assert_untouched(&optout, &optout_before).await;
    w.assert_untouched(&stray, &stray_before).await;
    w.assert_untouched(&stopped, &stopped_before).await;
    w.assert_untouched(&prot, &prot_before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_is_held_then_acted_on_when_it_passes() {
    // Four of four containers fail at once: a storm (the limit is 3); it passes 6 s after the
    // failures began.
    let Some(mut w) = World::start(&["--storm-threshold", "3", "--storm-window", "6s"]).await
    else {
        return;
    };
    let mut patients = Vec::new();
    for n in 0..4 {
        patients.push(w.killed(&format!("storm{n}")).await);
    }
    let reqs: Vec<Envelope> = patients
        .iter()
        .map(|(p, _)| {
            w.request_for(
                Some(p),
                Action::Restart,
                HOST,
                Some(Problem::new(ProblemKind::Died)),
            )
        })
        .collect();
    w.bus.publish_all(&reqs).await.expect("publish");
    let sent = Instant::now();
    // Held: nothing is restarted while the storm lasts, and nothing is reported yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (p, before) in &patients {
        w.assert_untouched(p, before).await;
    }
    let early = w
        .results
        .collect_for(Duration::from_millis(100), |e| result_of(e).is_some())
        .await;
    assert!(early.is_empty(), "held, not refused: {early:#?}");
    // Once the failures are older than the window, each still failing is acted on.
    for ((p, before), req) in patients.iter().zip(&reqs) {
        let (_, r) = w.result(req).await;
        assert_eq!(r.outcome, Outcome::Success, "{r:?}");
        assert!(r.duration_ms >= 5_000, "decided after the storm: {r:?}");
        assert!(started_at(&w.inspect(p).await) > finished_at(before));
    }
    assert!(sent.elapsed() >= Duration::from_secs(5));
    let paused = w
        .escalations(
            EscalationKind::RemediationPaused,
            Duration::from_millis(500),
        )
        .await;
    assert_eq!(paused.len(), 1, "exactly one escalation: {paused:#?}");
    assert_eq!(paused[0].severity, Severity::Critical);
    for (p, _) in &patients {
        assert!(
            paused[0].detail.contains(&p.name),
            "names {}: {paused:#?}",
            p.name
        );
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_host_ignored() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (p, before) = w.crashed("elsewhere", watched(&[])).await;
    let foreign = w.request(Some(&p), Action::Restart, "elsewhere");
    w.publish(&foreign).await;
    // A request of our own after it, to show the responder is reading.
    let ours = w.send(Some(&p), Action::None).await;
    let (_, r) = w.result(&ours).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    w.drained().await;

    let seen = w.results_for(&foreign, Duration::from_secs(3)).await;
    assert!(seen.is_empty(), "{seen:#?}");
    assert!(
        !w.audit()
            .await
            .iter()
            .any(|e| result_of(e).is_some_and(|r| r.request_id == foreign.id)),
        "nothing audited for another host's request"
    );
    assert_eq!(w.responder().metrics.ignored_other_host.get(), 1);
    w.assert_untouched(&p, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stop_restarts_successfully() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    // Ignores SIGTERM: Docker kills it when its own stop timeout (the label) runs out. The
    // responder's default is 1 s; the label says 6.
    let spec = PatientSpec {
        args: args(&["run", "--ignore-sigterm"]),
        labels: watched(&[("hemostat.stop_timeout", "6")]),
        ..PatientSpec::default()
    };
    let p = w.patient("slow", spec).await;
    let before = w.inspect(&p).await;
    let req = w.send_for(&p, Action::Restart, parent_restarted()).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    let v = r.verification.as_ref().expect("a verification");
    assert!(v.running, "{v:?}");
    assert!(
        r.duration_ms >= 6_000,
        "the label's 6 s stop timeout was used, not the default 1 s: {r:?}"
    );
    let after = w.inspect(&p).await;
    assert_eq!(status(&after), "running");
    let waited = (started_at(&after) - started_at(&before)).to_std().unwrap();
    assert!(waited >= Duration::from_secs(6), "{waited:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_has_every_decision() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (fixed, _) = w.killed("fixed").await;
    let (prot, _) = w
        .crashed("protected", watched(&[("hemostat.protect", "true")]))
        .await;
    let paused = w.patient("paused", PatientSpec::watched(&["run"])).await;
    paused.cli(&["pause"]);
    w.wait_state(&paused, "paused", |i| status(i) == "paused")
        .await;

    let cases = [
        (&fixed, Outcome::Success, None),
        (&prot, Outcome::Rejected, Some(Guard::Protection)),
        (&paused, Outcome::Skipped, Some(Guard::Person)),
    ];
    let mut decided = Vec::new();
    for (p, want, guard) in cases {
        let req = w.send(Some(p), Action::Restart).await;
        let (env, r) = w.result(&req).await;
        assert_eq!(r.outcome, want, "{}: {r:?}", p.name);
        assert_eq!(
            r.guard, guard,
            "the audit names the guard that decided: {r:?}"
        );
        assert_eq!(r.action, Action::Restart);
        assert!(!r.dry_run);
        assert!(!r.reason.is_empty());
        assert_eq!(r.container.as_ref().map(|c| &c.name), Some(&p.name));
        if want == Outcome::Success {
            let v = r.verification.as_ref().expect("a verification");
            assert!(v.running, "{v:?}");
            assert!(r.duration_ms > 0, "{r:?}");
        } else {
            assert!(r.verification.is_none(), "{r:?}");
        }
        decided.push((req, env));
    }
    paused.cli(&["unpause"]);

    let audit = w.audit().await;
    let audited: Vec<&RemediationResult> = audit.iter().filter_map(result_of).collect();
    assert_eq!(audited.len(), 3, "one entry per decision: {audited:#?}");
    for (req, env) in &decided {
        let same: Vec<&Envelope> = audit
            .iter()
            .filter(|e| result_of(e).is_some_and(|r| r.request_id == req.id))
            .collect();
        assert_eq!(same.len(), 1, "{same:#?}");
        assert_eq!(same[0], env, "the audit holds the very envelope reported");
    }
    // The refusal's escalation is audited too.
    assert!(
        audit.iter().any(|e| escalation_of(e)
            .is_some_and(|x| { x.kind == EscalationKind::ProtectedContainer && about(x, &prot) })),
        "{audit:#?}"
    );
    w.stop().await;
}

// --- approve mode, a person's "restart now", maintenance windows ---

/// A watched patient in approve mode, killed (a failure), with its exited state.
async fn killed_in_approve_mode(w: &World, suffix: &str) -> (Patient, ContainerInspectResponse) {
    let spec = PatientSpec {
        args: args(&["run"]),
        labels: watched(&[("hemostat.mode", "approve")]),
        ..PatientSpec::default()
    };
    let p = w.patient(suffix, spec).await;
    p.cli(&["kill"]);
    let i = w.wait_state(&p, "exited", |i| status(i) == "exited").await;
    (p, i)
}

impl World {
    /// Waits for the approval escalation of `req` and returns it.
    async fn proposal_of(&mut self, req: &Envelope, p: &Patient) -> (Envelope, Escalation) {
        let id = req.id.clone();
        let env = self
            .alerts
            .wait_for(WAIT, &format!("the proposal of {id}"), |e| {
                escalation_of(e).is_some_and(|x| {
                    x.kind == EscalationKind::ApprovalNeeded
                        && x.proposal.as_ref().is_some_and(|pr| pr.id == id)
                })
            })
            .await;
        let esc = escalation_of(&env).cloned().expect("an escalation");
        assert!(about(&esc, p), "{esc:?}");
        (env, esc)
    }

    /// Records a person's decision on proposal `id`, as the dashboard does.
    async fn decide(&self, id: &str, decision: &str) {
        let mut conn = self.redis.conn().await;
        let set: Option<String> = redis::cmd("SET")
            .arg(hemostat_common::events::proposals::decision(HOST, id))
            .arg(decision)
            .arg("NX")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(set.is_some(), "decided twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_mode_waits_for_a_person_and_an_approval_restarts() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (p, before) = killed_in_approve_mode(&w, "approve-yes").await;
    let req = w.send(Some(&p), Action::Restart).await;
    let (proposed, esc) = w.proposal_of(&req, &p).await;
    let proposal = esc.proposal.clone().unwrap();
    assert_eq!(proposal.action, Action::Restart);
    assert!(proposal.expires_at > Utc::now(), "{proposal:?}");
    assert!(esc.summary.contains("approve restart of"), "{esc:?}");
    // Nothing is done while it waits, and nothing is reported.
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.assert_untouched(&p, &before).await;
    assert!(
        w.results_for(&req, Duration::from_millis(100))
            .await
            .is_empty(),
        "no decision is reported while the proposal waits"
    );
    w.decide(&req.id, "approved:ana").await;
    let (done, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert_eq!(r.guard, None, "{r:?}");
    let after = w.inspect(&p).await;
    assert_eq!(status(&after), "running");
    assert!(started_at(&after) > finished_at(&before));
    // Every step is in the audit stream: the proposal, then the result.
    let audit = w.audit().await;
    let at = |e: &Envelope| audit.iter().position(|a| a == e);
    let (a, b) = (at(&proposed), at(&done));
    assert!(a.is_some() && b.is_some() && a < b, "{audit:#?}");
    // One proposal only, however often the request was judged while it waited.
    let proposals = w
        .escalations(EscalationKind::ApprovalNeeded, Duration::from_millis(300))
        .await;
    assert_eq!(
        proposals.iter().filter(|x| about(x, &p)).count(),
        1,
        "{proposals:#?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_proposal_does_nothing() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (p, before) = killed_in_approve_mode(&w, "approve-no").await;
    let req = w.send(Some(&p), Action::Restart).await;
    w.proposal_of(&req, &p).await;
    w.decide(&req.id, "declined:bob").await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert_eq!(r.guard, Some(Guard::Approval), "{r:?}");
    assert!(r.reason.contains("declined by bob"), "{r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.assert_untouched(&p, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_proposal_does_nothing() {
    let Some(mut w) = World::start(&["--approval-ttl", "10s"]).await else {
        return;
    };
    let (p, before) = killed_in_approve_mode(&w, "approve-late").await;
    let req = w.send(Some(&p), Action::Restart).await;
    w.proposal_of(&req, &p).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert_eq!(r.guard, Some(Guard::Approval), "{r:?}");
    assert!(r.reason.contains("expired"), "{r:?}");
    w.assert_untouched(&p, &before).await;
    // A decision after the report changes nothing.
    w.decide(&req.id, "approved:late").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.assert_untouched(&p, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_approve_mode_and_a_label_that_opts_out() {
    let Some(mut w) = World::start(&["--mode", "approve"]).await else {
        return;
    };
    let (auto, _) = w.killed("auto-anyway").await;
    // `killed` gives plain watched labels: it needs approval. This one says auto.
    let spec = PatientSpec {
        args: args(&["run"]),
        labels: watched(&[("hemostat.mode", "auto")]),
        ..PatientSpec::default()
    };
    let opted = w.patient("opted-auto", spec).await;
    opted.cli(&["kill"]);
    w.wait_state(&opted, "exited", |i| status(i) == "exited")
        .await;
    let held = w.send(Some(&auto), Action::Restart).await;
    w.proposal_of(&held, &auto).await;
    let now = w.send(Some(&opted), Action::Restart).await;
    let (_, r) = w.result(&now).await;
    assert_eq!(
        r.outcome,
        Outcome::Success,
        "hemostat.mode=auto acts at once: {r:?}"
    );
    w.stop().await;
}

/// A person's request, as the dashboard publishes it.
fn person_request(p: &Patient, by: &str) -> Envelope {
    Envelope::new(
        "dashboard",
        HOST,
        Payload::PersonRequest(RemediationRequest {
            container: Some(ContainerRef {
                id: p.name.clone(),
                name: p.name.clone(),
                ..ContainerRef::default()
            }),
            target_host: HOST.into(),
            action: Action::Restart,
            root_cause: "a person asked for a restart".into(),
            reason: "restart now".into(),
            confidence: 1.0,
            analysis_method: AnalysisMethod::Person,
            fallback_reason: None,
            alert_id: String::new(),
            problem: None,
            requested_by: Some(by.into()),
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_now_passes_the_same_guards() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    // A healthy, running container: a person may restart it (in approve mode too).
    let spec = PatientSpec {
        args: args(&["run"]),
        labels: watched(&[("hemostat.mode", "approve")]),
        ..PatientSpec::default()
    };
    let fine = w.patient("restart-now", spec).await;
    let before = w
        .wait_state(&fine, "running", |i| status(i) == "running")
        .await;
    let req = person_request(&fine, "dashboard:ana");
    w.publish(&req).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    let after = w.inspect(&fine).await;
    assert!(started_at(&after) > started_at(&before), "restarted");
    // A protected container is still refused, by the same guard as any request.
    let spec = PatientSpec {
        args: args(&["run"]),
        labels: watched(&[("hemostat.protect", "true")]),
        ..PatientSpec::default()
    };
    let guarded = w.patient("restart-now-protected", spec).await;
    let before = w
        .wait_state(&guarded, "running", |i| status(i) == "running")
        .await;
    let req = person_request(&guarded, "dashboard:ana");
    w.publish(&req).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Rejected, "{r:?}");
    assert_eq!(r.guard, Some(Guard::Protection), "{r:?}");
    w.assert_untouched(&guarded, &before).await;
    // And one a person stopped stays stopped: their stop wins over a restart now.
    let stopped = w
        .patient("restart-now-stopped", PatientSpec::watched(&["run"]))
        .await;
    stopped.cli(&["stop"]);
    let before = w
        .wait_state(&stopped, "exited", |i| status(i) == "exited")
        .await;
    let req = person_request(&stopped, "dashboard:ana");
    w.publish(&req).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(
        (r.outcome, r.guard),
        (Outcome::Skipped, Some(Guard::Person)),
        "{r:?}"
    );
    w.assert_untouched(&stopped, &before).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_window_holds_remediation_and_the_problem_is_handled_when_it_ends() {
    let Some(mut w) = World::start(&[]).await else {
        return;
    };
    let (p, before) = w.killed("maint").await;
    let (held_by_other, _) = w.killed("maint-other").await;
    let now = Utc::now();
    let window = hemostat_common::windows::WindowSpec {
        duration: Some("6s".into()),
        container: Some(format!("{}-maint", w.prefix)),
        pauses: "remediation".into(),
        comment: "db upgrade".into(),
        ..Default::default()
    }
    .into_window(now, "test")
    .unwrap();
    hemostat_common::windows::add(&w.bus, &window)
        .await
        .unwrap();
    let req = w.send(Some(&p), Action::Restart).await;
    // The other container is not in the window's scope: it is healed at once.
    let other = w.send(Some(&held_by_other), Action::Restart).await;
    let (_, r) = w.result(&other).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.assert_untouched(&p, &before).await;
    let (_, r) = w.result(&req).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    let after = w.inspect(&p).await;
    let ended = now + chrono::Duration::seconds(6);
    assert!(
        started_at(&after) >= ended - chrono::Duration::milliseconds(50),
        "restarted only once the window ended ({ended}): {:?}",
        after.state
    );
    w.stop().await;
}
