//! Container text is contained: what a container prints reaches people scrubbed of secrets and
//! unable to mention, link or format, from Docker all the way to the chat sink.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hemostat_tests::pipeline::{alert, slack_sink};
use hemostat_tests::{
    Patient, PatientSpec, RunningMonitor, TestRedis, docker, ensure_patient_image, init_logs,
    random_id,
};

const WAIT: Duration = Duration::from_secs(60);

/// A real container whose health check prints a database URL with its password and a Slack
/// channel-wide mention: the monitor reads it from Docker, the alert agent sends it to a
/// Slack-protocol sink, and what arrives holds neither the password nor a live mention (nor a
/// live link), while it still names the container and says what the check said. Monitor and
/// alert run as their own Redis users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_health_check_reaches_slack_scrubbed_and_inert() {
    init_logs();
    let Some(redis) = TestRedis::start_with_acl() else {
        return;
    };
    let Some(docker) = docker().await else {
        return;
    };
    ensure_patient_image();
    let prefix = format!("hscontain-{}", random_id());
    let scope = format!("hemostat.test={prefix}");
    let (sink_addr, sunk) = slack_sink().await;
    let monitor = RunningMonitor::start(&redis.url_as("monitor"), &["--scope-label", &scope]).await;
    let (alert_stop, alert_done) = alert(
        &redis.url_as("alert"),
        &format!("http://{sink_addr}/services/T0/B0/contained"),
    )
    .await;

    let says = "db unreachable: postgres://app:secret@db:5432/app <!channel> \
                see <http://evil.example|the runbook> @here";
    let p = Patient::start(
        &docker,
        &prefix,
        "hostile",
        PatientSpec {
            health_interval: Some(Duration::from_secs(1)),
            health_says: Some(says.into()),
            ..PatientSpec::watched(&["run", "--unhealthy-after", "1"])
        },
    )
    .await;

    let deadline = Instant::now() + WAIT;
    let body = loop {
        let got = sunk.lock().unwrap().clone();
        if let Some(b) = got.into_iter().find(|b| b.contains(&p.name)) {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "no notification named {}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    hemostat_alert::render::check_block_kit(&v).unwrap_or_else(|e| panic!("{e}: {v:#}"));
    // No password, no mention, no disguised link: Slack acts only on `<...>` sequences, and
    // entity-escaped text has none.
    assert!(
        !body.contains("secret"),
        "the password reached Slack: {body}"
    );
    assert!(
        !body.contains("<!channel>") && !body.contains("<!here"),
        "{body}"
    );
    assert!(!body.contains('<'), "a live Slack sequence: {body}");
    assert!(!body.contains("<http"), "{body}");
    // Still said: the check's words, the host part of the URL, the container.
    assert!(body.contains("db unreachable"), "{body}");
    assert!(body.contains("5432/app"), "{body}");
    assert!(body.contains("&lt;!channel&gt;"), "{body}");

    assert!(monitor.stop().await, "monitor stopped cleanly");
    alert_stop.cancel();
    assert!(alert_done.await.unwrap_or(false), "alert stopped cleanly");
}
