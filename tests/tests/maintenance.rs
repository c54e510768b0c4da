//! Maintenance windows across the whole pipeline, on the real Docker engine and a real
//! redis-server: a window that pauses remediation and notifications holds a killed container
//! down and tells nobody while it holds, records what it held, sends one summary when it
//! ends, and then the container, still down, is healed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::Utc;
use hemostat_common::events::{Action, Channel, Outcome};
use hemostat_common::windows::{self, WindowSpec};
use hemostat_tests::openai_stub::RunningAnalyzer;
use hemostat_tests::pipeline::{RunningResponder, alert, slack_sink};
use hemostat_tests::records::{engine_to_ourselves, result_of, started_at, status};
use hemostat_tests::{
    Patient, PatientSpec, RunningMonitor, StreamReader, TestRedis, docker, ensure_patient_image,
    init_logs, random_id,
};

const WAIT: Duration = Duration::from_secs(60);
/// How long the test's window lasts.
const WINDOW_S: i64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_holds_a_killed_container_down_then_one_summary_and_it_is_healed() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let Some(docker) = docker().await else { return };
    if !engine_to_ourselves() {
        return;
    }
    ensure_patient_image();
    let prefix = format!("hsmaint-{}", random_id());
    let scope = format!("hemostat.test={prefix}");
    let url = redis.url();
    let monitor = RunningMonitor::start(&url, &["--scope-label", &scope]).await;
    let analyzer = RunningAnalyzer::start(&url, &[]).await;
    let responder = RunningResponder::start(&url, &["--scope-label", &scope]).await;
    let (slack, got) = slack_sink().await;
    let (alert_stop, alert_done) = alert(&url, &format!("http://{slack}/hook")).await;
    let bus = hemostat_common::bus::Bus::connect(
        &url,
        10_000,
        hemostat_common::metrics::AgentMetrics::default(),
        hemostat_common::http::Health::default(),
        &hemostat_common::shutdown::Shutdown::new(),
    )
    .await
    .unwrap();

    let victim = Patient::start(&docker, &prefix, "db", PatientSpec::watched(&["run"])).await;
    let opened = Utc::now();
    let w = WindowSpec {
        duration: Some(format!("{WINDOW_S}s")),
        container: Some(format!("{prefix}-*")),
        pauses: "both".into(),
        comment: "nightly backup".into(),
        ..WindowSpec::default()
    }
    .into_window(opened, "test")
    .unwrap();
    windows::add(&bus, &w).await.unwrap();
    // No pause: a window holds from the moment it is stored (a backup script opens one and
    // starts at once).

    let mut results = StreamReader::new(&redis, Channel::RemediationComplete);
    victim.cli(&["kill"]);
    // Held: the death is recorded as held, nobody is told, and the container stays down.
    let history = wait_history(&redis, |h| {
        h.iter()
            .any(|(d, fp, _)| d == "held" && fp.contains(&victim.name) && fp.ends_with("/died"))
    })
    .await;
    assert!(
        history.iter().all(|(d, _, _)| d != "sent"),
        "nothing is sent while the window holds: {history:?}"
    );
    let end = opened + chrono::Duration::seconds(WINDOW_S);
    while Utc::now() < end - chrono::Duration::seconds(1) {
        let i = docker
            .inspect_container(
                &victim.id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .unwrap();
        assert_eq!(status(&i), "exited", "held down while the window holds");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        got.lock().unwrap().is_empty(),
        "Slack was told during the window: {:?}",
        got.lock().unwrap()
    );

    // When it ends: the container is healed, and one summary tells what was held.
    let healed = results
        .wait_for(WAIT, "the victim restarted after the window", |e| {
            result_of(e).is_some_and(|r| {
                r.container.as_ref().is_some_and(|c| c.name == victim.name)
                    && r.action == Action::Restart
                    && r.outcome == Outcome::Success
            })
        })
        .await;
    assert!(result_of(&healed).is_some());
    let i = docker
        .inspect_container(
            &victim.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    assert_eq!(status(&i), "running");
    assert!(
        started_at(&i) >= end - chrono::Duration::milliseconds(100),
        "restarted only after the window ended"
    );
    let deadline = Instant::now() + WAIT;
    let summaries = loop {
        let bodies = got.lock().unwrap().clone();
        let s: Vec<String> = bodies
            .into_iter()
            .filter(|b| b.contains("Maintenance window"))
            .collect();
        if !s.is_empty() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(summaries.len(), 1, "one summary: {summaries:#?}");
    assert!(summaries[0].contains("nightly backup"), "{}", summaries[0]);
    assert!(
        summaries[0].contains(&victim.name),
        "it names what was held: {}",
        summaries[0]
    );
    // Give a second summary every chance to appear; none does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = got
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b.contains("Maintenance window"))
        .count();
    assert_eq!(n, 1);

    alert_stop.cancel();
    assert!(alert_done.await.unwrap());
    assert!(responder.stop().await);
    analyzer.stop().await;
    monitor.stop().await;
}

/// Waits until `pred` holds for the alert service's history: (decision, fingerprint, detail).
async fn wait_history(
    redis: &TestRedis,
    pred: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut conn = redis.conn().await;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(hemostat_alert::HISTORY_STREAM)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let h: Vec<(String, String, String)> = reply
            .ids
            .into_iter()
            .map(|e| {
                let get = |k: &str| {
                    e.map
                        .get(k)
                        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                        .unwrap_or_default()
                };
                (get("decision"), get("fingerprint"), get("detail"))
            })
            .collect();
        if pred(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "timed out; history: {h:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
