//! The monitor against the real Docker engine and a real redis-server: every kind of failure
//! becomes the right `health_alert`, a person's actions are told apart from failures, and
//! nothing is lost when Redis restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hemostat_common::events::{AlertKind, Channel, Detection, Envelope, HostAlertKind, Payload};
use hemostat_tests::{
    DockerProxy, Patient, PatientSpec, RunningMonitor, StreamReader, TestRedis, container_alert,
    docker, init_logs, random_id,
};

const WAIT: Duration = Duration::from_secs(30);

/// Sets up redis, docker and a monitor that watches only this test's containers (those
/// labelled `hemostat.test=<prefix>`), or returns early (skip outside CI).
macro_rules! setup {
    ($($flag:expr),* $(,)?) => {{
        init_logs();
        let Some(redis) = TestRedis::start() else { return };
        let Some(docker) = docker().await else { return };
        let prefix = format!("hstest-{}", random_id());
        let scope = scope_label(&prefix);
        let monitor =
            RunningMonitor::start(&redis.url(), &["--scope-label", &scope, $($flag),*]).await;
        let reader = StreamReader::new(&redis, Channel::HealthAlert);
        (redis, docker, monitor, reader, prefix)
    }};
}

/// The scope label that selects the patients of the test with this prefix.
fn scope_label(prefix: &str) -> String {
    format!("hemostat.test={prefix}")
}

/// `event_type` and kind for a container's alert.
fn is(e: &Envelope, name: &str, event_type: &str, kind: AlertKind) -> bool {
    e.event_type() == event_type
        && container_alert(e).is_some_and(|a| a.container.name == name && a.kind == kind)
}

fn about(e: &Envelope, name: &str) -> bool {
    container_alert(e).is_some_and(|a| a.container.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_is_reported_as_a_failure_with_its_exit_code() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!();
    let p = Patient::start(&docker, &prefix, "killed", PatientSpec::watched(&[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.cli(&["kill"]);
    let e = reader
        .wait_for(WAIT, "died alert", |e| {
            is(e, &p.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    let a = container_alert(&e).unwrap();
    assert!(!a.user_initiated);
    assert_eq!(a.detected_by, Detection::Event);
    assert_eq!(a.state.as_ref().unwrap().exit_code, Some(137));
    assert!(a.docker_event_time.is_some());
    assert_eq!(
        a.container
            .labels
            .get("hemostat.enable")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(e.host, "test-host");
    assert_eq!(e.agent, "monitor");
    assert!(monitor.stop().await, "monitor did not stop cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_reports_the_exit_code() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!();
    let p = Patient::start(
        &docker,
        &prefix,
        "exit3",
        PatientSpec::watched(&["run", "--exit-code", "3", "--after", "1"]),
    )
    .await;
    let e = reader
        .wait_for(WAIT, "died alert with exit code 3", |e| {
            is(e, &p.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    let a = container_alert(&e).unwrap();
    assert_eq!(a.state.as_ref().unwrap().exit_code, Some(3));
    assert!(a.summary.contains("exit code 3"), "{}", a.summary);
    assert!(monitor.stop().await);
}

/// The analyzer reads no engine, so the monitor sends the context with the alert: the newest
/// lines of the container's output, scrubbed of secrets and cut to `HEMOSTAT_LOG_LINES`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_carries_its_scrubbed_log_tail() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!("--log-lines", "3");
    let p = Patient::start(
        &docker,
        &prefix,
        "tail",
        PatientSpec::watched(&[
            "run",
            "--log-lines-at-start",
            "booting 1",
            "--log-lines-at-start",
            "booting 2",
            "--log-lines-at-start",
            "connecting to postgres://app:hunter2pass@db/app",
            "--log-lines-at-start",
            "login failed password=s3cr3tvalue user=bob",
            "--log-lines-at-start",
            "fatal: giving up",
            "--exit-code",
            "3",
            "--after",
            "1",
        ]),
    )
    .await;
    let e = reader
        .wait_for(WAIT, "died alert with its log tail", |e| {
            is(e, &p.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    let a = container_alert(&e).unwrap();
    let tail = a.logs.as_ref().expect("a death carries its log tail");
    assert_eq!(tail.lines.len(), 3, "{tail:?}");
    assert_eq!(tail.lines[2], "fatal: giving up", "{tail:?}");
    assert!(
        tail.lines[1].contains("login failed") && tail.lines[1].contains("[REDACTED]"),
        "{tail:?}"
    );
    let raw = serde_json::to_string(&e).unwrap();
    for secret in ["hunter2pass", "s3cr3tvalue"] {
        assert!(!raw.contains(secret), "{secret} left the host: {raw}");
    }
    assert!(!raw.contains("booting 1"), "more than 3 lines: {raw}");
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_under_a_memory_limit_is_an_oom_alert() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!();
    let spec = PatientSpec {
        memory_limit_mb: Some(32),
        ..PatientSpec::watched(&["run", "--leak-mb-per-sec", "10"])
    };
    let p = Patient::start(&docker, &prefix, "oom", spec).await;
    let e = reader
        .wait_for(WAIT, "oom_killed alert", |e| {
            is(e, &p.name, "container_unhealthy", AlertKind::OomKilled)
        })
        .await;
    let a = container_alert(&e).unwrap();
    let state = a.state.as_ref().unwrap();
    assert!(state.oom_killed);
    assert_eq!(state.exit_code, Some(137));
    // Known from an inspect while it was alive (one stats round passes before it dies).
    assert_eq!(state.memory_limit_bytes, Some(32 * 1024 * 1024));
    assert!(a.summary.contains("OOM"), "{}", a.summary);
    // One problem, one alert: no separate plain `died` for the same death.
    let died = reader
        .collect_for(Duration::from_secs(1), |e| {
            is(e, &p.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    assert!(died.is_empty(), "{died:?}");
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_alerts_once_and_recovers() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!();
    let spec = PatientSpec {
        health_interval: Some(Duration::from_millis(500)),
        health_retries: Some(1),
        ..PatientSpec::watched(&[
            "run",
            "--unhealthy-after",
            "1",
            "--healthy-again-after",
            "6",
        ])
    };
    let p = Patient::start(&docker, &prefix, "sick", spec).await;
    let e = reader
        .wait_for(WAIT, "unhealthy alert", |e| {
            is(e, &p.name, "container_unhealthy", AlertKind::Unhealthy)
        })
        .await;
    let a = container_alert(&e).unwrap();
    let health = a.state.as_ref().unwrap().health.as_ref().unwrap();
    assert_eq!(health.status, "unhealthy");
    assert!(
        health
            .last_output
            .as_deref()
            .unwrap_or_default()
            .contains("failing"),
        "{health:?}"
    );
    reader
        .wait_for(WAIT, "recovery", |e| {
            is(e, &p.name, "container_recovered", AlertKind::Unhealthy)
        })
        .await;
    let unhealthy = reader
        .seen
        .iter()
        .filter(|e| is(e, &p.name, "container_unhealthy", AlertKind::Unhealthy))
        .count();
    assert_eq!(unhealthy, 1, "one alert per transition");
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_and_pause_are_a_persons_actions_not_failures() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!();
    let stopped = Patient::start(&docker, &prefix, "stopped", PatientSpec::watched(&[])).await;
    let paused = Patient::start(&docker, &prefix, "paused", PatientSpec::watched(&[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stopped.cli(&["stop"]);
    paused.cli(&["pause"]);
    let e = reader
        .wait_for(WAIT, "stop as a user action", |e| {
            is(
                e,
                &stopped.name,
                "container_user_action",
                AlertKind::Stopped,
            )
        })
        .await;
    assert!(container_alert(&e).unwrap().user_initiated);
    let e = reader
        .wait_for(WAIT, "pause as a user action", |e| {
            is(e, &paused.name, "container_user_action", AlertKind::Paused)
        })
        .await;
    assert!(container_alert(&e).unwrap().user_initiated);
    // And neither is ever reported as a failure.
    let failures = reader
        .collect_for(Duration::from_secs(2), |e| {
            e.event_type() == "container_unhealthy"
                && (about(e, &stopped.name) || about(e, &paused.name))
        })
        .await;
    assert!(failures.is_empty(), "{failures:#?}");
    paused.cli(&["unpause"]);
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_cpu_alerts_exactly_once_then_recovers() {
    // Threshold from the container's label (50 % of one core), two samples to fire or clear.
    let (_redis, docker, monitor, mut reader, prefix) = setup!("--breach-samples", "2");
    let mut spec = PatientSpec::watched(&["run", "--cpu-for", "8"]);
    spec.labels
        .insert("hemostat.cpu_threshold".into(), "50".into());
    let p = Patient::start(&docker, &prefix, "hog", spec).await;
    let e = reader
        .wait_for(WAIT, "cpu_high alert", |e| {
            is(e, &p.name, "container_unhealthy", AlertKind::CpuHigh)
        })
        .await;
    let a = container_alert(&e).unwrap();
    let breach = a.breach.as_ref().unwrap();
    assert_eq!(breach.threshold, 50.0);
    assert!(breach.value >= 50.0 && breach.samples >= 2, "{breach:?}");
    assert_eq!(a.detected_by, Detection::Stats);
    assert!(a.metrics.is_some());
    reader
        .wait_for(WAIT, "cpu recovery", |e| {
            is(e, &p.name, "container_recovered", AlertKind::CpuHigh)
        })
        .await;
    let alerts = reader
        .collect_for(Duration::from_secs(2), |e| {
            is(e, &p.name, "container_unhealthy", AlertKind::CpuHigh)
        })
        .await;
    assert_eq!(
        alerts.len(),
        1,
        "exactly one alert for one breach: {alerts:#?}"
    );
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_keep_flowing_across_a_redis_restart() {
    let (mut redis, docker, monitor, mut reader, prefix) = setup!();
    let before = Patient::start(&docker, &prefix, "before", PatientSpec::watched(&[])).await;
    let during = Patient::start(&docker, &prefix, "during", PatientSpec::watched(&[])).await;
    let after = Patient::start(&docker, &prefix, "after", PatientSpec::watched(&[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    before.cli(&["kill"]);
    reader
        .wait_for(WAIT, "alert before the restart", |e| about(e, &before.name))
        .await;

    redis.stop();
    // Killed while Redis is down: the alert waits in the monitor's outbox.
    during.cli(&["kill"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.start_again();
    reader.rewind();
    reader
        .wait_for(WAIT, "alert raised while redis was down", |e| {
            is(e, &during.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    after.cli(&["kill"]);
    reader
        .wait_for(WAIT, "alert after the restart", |e| {
            is(e, &after.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_containers_in_scope_are_watched() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!();
    let unlabelled = Patient::start(
        &docker,
        &prefix,
        "unlabelled",
        PatientSpec {
            args: vec![],
            ..PatientSpec::default()
        },
    )
    .await;
    let mut excluded_spec = PatientSpec::watched(&[]);
    excluded_spec
        .labels
        .insert("hemostat.enable".into(), "false".into());
    let excluded = Patient::start(&docker, &prefix, "excluded", excluded_spec).await;
    let mut protected_spec = PatientSpec::watched(&[]);
    protected_spec
        .labels
        .insert("hemostat.protect".into(), "true".into());
    let protected = Patient::start(&docker, &prefix, "protected", protected_spec).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    unlabelled.cli(&["kill"]);
    excluded.cli(&["kill"]);
    protected.cli(&["kill"]);
    // The protected one is watched (alert only) and says so.
    let e = reader
        .wait_for(WAIT, "protected container's alert", |e| {
            is(e, &protected.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    assert!(container_alert(&e).unwrap().protected);
    let others = reader
        .collect_for(Duration::from_secs(2), |e| {
            about(e, &unlabelled.name) || about(e, &excluded.name)
        })
        .await;
    assert!(
        others.is_empty(),
        "out-of-scope containers alerted: {others:#?}"
    );
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_all_watches_unlabelled_containers_but_never_excluded_ones() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!("--monitor-all", "true");
    let unlabelled = Patient::start(&docker, &prefix, "any", PatientSpec::default()).await;
    let mut excluded_spec = PatientSpec::default();
    excluded_spec
        .labels
        .insert("hemostat.enable".into(), "false".into());
    let excluded = Patient::start(&docker, &prefix, "optout", excluded_spec).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    excluded.cli(&["kill"]);
    unlabelled.cli(&["kill"]);
    reader
        .wait_for(WAIT, "unlabelled container's alert", |e| {
            is(e, &unlabelled.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    let excluded_alerts = reader
        .collect_for(Duration::from_secs(1), |e| about(e, &excluded.name))
        .await;
    assert!(excluded_alerts.is_empty(), "{excluded_alerts:#?}");
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_and_host_pressure_are_published() {
    // Any real disk is over 1 % full, so this must report disk pressure.
    let (redis, docker, monitor, mut reader, prefix) = setup!("--disk-threshold", "1");
    let p = Patient::start(
        &docker,
        &prefix,
        "sampled",
        PatientSpec::watched(&["run", "--leak-mb-per-sec", "8", "--leak-max-mb", "16"]),
    )
    .await;
    let mut metrics = StreamReader::new(&redis, Channel::Metrics);
    let e = metrics
        .wait_for(WAIT, "a sample of the patient with CPU", |e| {
            match &e.payload {
                Payload::ContainerMetrics(b) => b
                    .samples
                    .iter()
                    .any(|s| s.name == p.name && s.cpu_percent.is_some()),
                _ => false,
            }
        })
        .await;
    let Payload::ContainerMetrics(batch) = &e.payload else {
        unreachable!()
    };
    let s = batch.samples.iter().find(|s| s.name == p.name).unwrap();
    assert!(s.memory_usage_bytes > 0);
    assert!(s.pids.unwrap_or(0) >= 1);
    metrics
        .wait_for(WAIT, "a host sample", |e| match &e.payload {
            Payload::HostMetrics(h) => h.memory_total_bytes > 0 && h.disk_total_bytes > 0,
            _ => false,
        })
        .await;
    reader
        .wait_for(WAIT, "disk pressure", |e| match &e.payload {
            Payload::HostUnhealthy(h) => h.kind == HostAlertKind::DiskPressure,
            _ => false,
        })
        .await;
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_are_served() {
    let (_redis, _docker, monitor, _reader, _prefix) = setup!();
    let health = http_get(monitor.http, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let metrics = http_get(monitor.http, "/metrics").await;
    for family in [
        "hemostat_redis_up 1",
        "hemostat_docker_up 1",
        "hemostat_events_out_total",
        "hemostat_monitor_docker_events_total",
        "hemostat_outbox_dropped_total 0",
        "hemostat_monitor_stats_round_seconds_count",
    ] {
        // Families with labels have no sample until first used; their TYPE line is there.
        let name = family
            .split([' ', '{'])
            .next()
            .unwrap()
            .trim_end_matches("_total");
        assert!(
            metrics.contains(family) || metrics.contains(&format!("# TYPE {name}")),
            "{family} missing from:\n{metrics}"
        );
    }
    assert!(monitor.stop().await);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_event_stream_is_re_established_and_nothing_is_missed() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let Some(docker) = docker().await else { return };
    let mut proxy = DockerProxy::start();
    let host = proxy.docker_host();
    let prefix = format!("hstest-{}", random_id());
    let scope = scope_label(&prefix);
    let monitor = RunningMonitor::start(
        &redis.url(),
        &["--docker-host", &host, "--scope-label", &scope],
    )
    .await;
    let mut reader = StreamReader::new(&redis, Channel::HealthAlert);
    let before = Patient::start(&docker, &prefix, "before", PatientSpec::watched(&[])).await;
    let blind = Patient::start(&docker, &prefix, "blind", PatientSpec::watched(&[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    before.cli(&["kill"]);
    reader
        .wait_for(WAIT, "alert before the cut", |e| about(e, &before.name))
        .await;

    // "Docker restarts": the event stream drops, and a container dies while nobody listens.
    proxy.cut().await;
    blind.cli(&["kill"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let e = reader
        .wait_for(
            WAIT,
            "the death that happened while the stream was down",
            |e| is(e, &blind.name, "container_unhealthy", AlertKind::Died),
        )
        .await;
    // Docker replays it (`since`), or the re-listing finds it: either way it is reported once.
    let a = container_alert(&e).unwrap();
    assert!(
        matches!(a.detected_by, Detection::Event | Detection::Resync),
        "{a:?}"
    );
    let dupes = reader
        .collect_for(Duration::from_secs(2), |e| {
            is(e, &blind.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    assert_eq!(dupes.len(), 1, "{dupes:#?}");
    let metrics = http_get(monitor.http, "/metrics").await;
    assert!(
        !metrics.contains("hemostat_monitor_event_stream_reconnects_total 0"),
        "no reconnect counted:\n{metrics}"
    );
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_in_their_health_check_start_period_are_not_judged() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!("--breach-samples", "2");
    // Both hold ~20 MiB of a 32 MiB limit (over a 50 % label threshold); one is still in a
    // long health-check start period.
    let mut spec = PatientSpec {
        memory_limit_mb: Some(32),
        ..PatientSpec::watched(&["run", "--leak-mb-per-sec", "20", "--leak-max-mb", "20"])
    };
    spec.labels
        .insert("hemostat.memory_threshold".into(), "50".into());
    let judged = Patient::start(&docker, &prefix, "judged", spec.clone()).await;
    let starting = Patient::start(
        &docker,
        &prefix,
        "starting",
        PatientSpec {
            health_interval: Some(Duration::from_secs(60)),
            health_start_period: Some(Duration::from_secs(60)),
            ..spec
        },
    )
    .await;
    reader
        .wait_for(WAIT, "memory alert for the judged container", |e| {
            is(
                e,
                &judged.name,
                "container_unhealthy",
                AlertKind::MemoryHigh,
            )
        })
        .await;
    let premature = reader
        .collect_for(Duration::from_secs(3), |e| {
            e.event_type() == "container_unhealthy" && about(e, &starting.name)
        })
        .await;
    assert!(
        premature.is_empty(),
        "judged during its start period: {premature:#?}"
    );
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_without_the_scope_label_is_not_watched() {
    // The monitor watches `hemostat.test=<prefix>`; the other container opts in with
    // `hemostat.enable=true` but carries another test's label.
    let (_redis, docker, monitor, mut reader, prefix) = setup!();
    let inside = Patient::start(&docker, &prefix, "inside", PatientSpec::watched(&[])).await;
    let other_prefix = format!("{prefix}-other");
    let outside =
        Patient::start(&docker, &other_prefix, "outside", PatientSpec::watched(&[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    outside.cli(&["kill"]);
    inside.cli(&["kill"]);
    reader
        .wait_for(WAIT, "the labelled container's alert", |e| {
            is(e, &inside.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    let outside_alerts = reader
        .collect_for(Duration::from_secs(2), |e| about(e, &outside.name))
        .await;
    assert!(outside_alerts.is_empty(), "{outside_alerts:#?}");
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_restart_is_neither_a_stop_nor_a_failure_but_docker_stop_still_is_a_stop() {
    let (_redis, docker, monitor, mut reader, prefix) = setup!();
    let p = Patient::start(&docker, &prefix, "restarted", PatientSpec::watched(&[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Exactly what the responder does, and what a person's `docker restart` does: kill(15),
    // die, stop, start, restart.
    p.cli(&["restart", "-t", "5"]);
    // Longer than every settle window (stop 300 ms, restart 1 s) several times over.
    let after_restart = reader
        .collect_for(Duration::from_secs(4), |e| {
            about(e, &p.name)
                && matches!(
                    e.event_type(),
                    "container_user_action" | "container_unhealthy"
                )
        })
        .await;
    assert!(
        after_restart.is_empty(),
        "a restart was reported: {after_restart:#?}"
    );
    // The same container, still watched: a person's stop is one `stopped`, and no failure.
    p.cli(&["stop", "-t", "5"]);
    reader
        .wait_for(WAIT, "the stop as a person's action", |e| {
            is(e, &p.name, "container_user_action", AlertKind::Stopped)
        })
        .await;
    let stops = reader
        .collect_for(Duration::from_secs(2), |e| {
            is(e, &p.name, "container_user_action", AlertKind::Stopped)
        })
        .await;
    assert_eq!(stops.len(), 1, "{stops:#?}");
    let failures = reader
        .collect_for(Duration::ZERO, |e| {
            about(e, &p.name) && e.event_type() == "container_unhealthy"
        })
        .await;
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaths_while_the_monitor_was_down_are_reported_once_at_start_up() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let Some(docker) = docker().await else { return };
    let prefix = format!("hstest-{}", random_id());
    let scope = scope_label(&prefix);
    let mut reader = StreamReader::new(&redis, Channel::HealthAlert);

    // No monitor runs: one container crashes, a person stops another (which ignores SIGTERM,
    // so it ends with 137 like a kill), a third ends cleanly.
    let crashed = Patient::start(
        &docker,
        &prefix,
        "crashed",
        PatientSpec::watched(&["run", "--exit-code", "3", "--after", "1"]),
    )
    .await;
    let stopped = Patient::start(
        &docker,
        &prefix,
        "stopped",
        PatientSpec::watched(&["run", "--ignore-sigterm"]),
    )
    .await;
    let clean = Patient::start(
        &docker,
        &prefix,
        "clean",
        PatientSpec::watched(&["run", "--exit-code", "0", "--after", "1"]),
    )
    .await;
    stopped.cli(&["stop", "-t", "1"]);
    let crashed_state = crashed.wait_for_exit(&docker, WAIT).await;
    assert_eq!(crashed_state.exit_code, Some(3));
    assert_eq!(
        stopped.wait_for_exit(&docker, WAIT).await.exit_code,
        Some(137)
    );
    assert_eq!(clean.wait_for_exit(&docker, WAIT).await.exit_code, Some(0));

    let monitor = RunningMonitor::start(&redis.url(), &["--scope-label", &scope]).await;
    let e = reader
        .wait_for(WAIT, "the crash reported at start-up", |e| {
            is(e, &crashed.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    let a = container_alert(&e).unwrap();
    assert_eq!(a.detected_by, Detection::Resync);
    assert!(!a.user_initiated);
    let finished: chrono::DateTime<chrono::Utc> = crashed_state
        .finished_at
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let since = a.since.expect("since");
    assert!(
        (since - finished).num_milliseconds().abs() < 1,
        "since {since} is not FinishedAt {finished}"
    );
    let state = a.state.as_ref().expect("state from inspect");
    assert_eq!((state.exit_code, state.running), (Some(3), false));
    assert_eq!(state.status, "exited");
    let first_run = reader
        .collect_for(Duration::from_secs(3), |e| {
            about(e, &crashed.name) || about(e, &stopped.name) || about(e, &clean.name)
        })
        .await;
    assert_eq!(
        first_run.len(),
        1,
        "exactly one report, for the crash: {first_run:#?}"
    );
    assert!(monitor.stop().await);

    // A redeploy: the monitor starts again. Another container crashed meanwhile; its report
    // shows the second start-up has made its decisions, and the first crash is not among them.
    let crashed_later = Patient::start(
        &docker,
        &prefix,
        "crashed-later",
        PatientSpec::watched(&["run", "--exit-code", "4", "--after", "0"]),
    )
    .await;
    crashed_later.wait_for_exit(&docker, WAIT).await;
    let monitor = RunningMonitor::start(&redis.url(), &["--scope-label", &scope]).await;
    reader
        .wait_for(WAIT, "the crash while the monitor was redeployed", |e| {
            is(
                e,
                &crashed_later.name,
                "container_unhealthy",
                AlertKind::Died,
            )
        })
        .await;
    let all = reader
        .collect_for(Duration::from_secs(2), |e| {
            about(e, &crashed.name) || about(e, &stopped.name) || about(e, &clean.name)
        })
        .await;
    assert_eq!(all.len(), 1, "reported again after the redeploy: {all:#?}");
    assert!(monitor.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_death_reported_as_it_happened_is_not_reported_again_after_a_redeploy() {
    let (redis, docker, monitor, mut reader, prefix) = setup!();
    let crashed = Patient::start(
        &docker,
        &prefix,
        "crashed",
        PatientSpec::watched(&["run", "--exit-code", "3", "--after", "1"]),
    )
    .await;
    let e = reader
        .wait_for(WAIT, "the crash as it happened", |e| {
            is(e, &crashed.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    assert_eq!(container_alert(&e).unwrap().detected_by, Detection::Event);
    assert!(monitor.stop().await);

    // The container is still down when the monitor comes back. Another one crashed meanwhile:
    // its report shows the new monitor has made its start-up decisions.
    let crashed_later = Patient::start(
        &docker,
        &prefix,
        "crashed-later",
        PatientSpec::watched(&["run", "--exit-code", "4", "--after", "0"]),
    )
    .await;
    crashed_later.wait_for_exit(&docker, WAIT).await;
    let scope = scope_label(&prefix);
    let monitor = RunningMonitor::start(&redis.url(), &["--scope-label", &scope]).await;
    reader
        .wait_for(WAIT, "the crash while the monitor was away", |e| {
            is(
                e,
                &crashed_later.name,
                "container_unhealthy",
                AlertKind::Died,
            )
        })
        .await;
    let reports = reader
        .collect_for(Duration::from_secs(2), |e| {
            is(e, &crashed.name, "container_unhealthy", AlertKind::Died)
        })
        .await;
    assert_eq!(reports.len(), 1, "reported again: {reports:#?}");
    // It is still tracked: starting it again closes the problem.
    crashed.cli(&["start"]);
    let e = reader
        .wait_for(WAIT, "the recovery of the death reported before", |e| {
            is(e, &crashed.name, "container_recovered", AlertKind::Died)
        })
        .await;
    assert!(container_alert(&e).unwrap().since.is_some());
    assert!(monitor.stop().await);
}
