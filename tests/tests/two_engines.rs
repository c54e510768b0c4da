//! Two real Docker engines on one machine, one Redis: engine A (the machine's) and engine B (a
//! second `dockerd`, [`SecondEngine`]) each have a monitor and a responder; one analyzer (with
//! no Docker access at all) and one alert service serve both. Same-named containers run on
//! both engines; killing B's must restart B's only, every message about it must name B, the
//! LLM must see B's log lines only, and asking each host for the container's logs must give
//! that host's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::InspectContainerOptions;
use hemostat_common::ask;
use hemostat_common::events::{Channel, Envelope, Payload};
use hemostat_tests::engine2::SecondEngine;
use hemostat_tests::openai_stub::{OpenAiStub, Reply, RunningAnalyzer};
use hemostat_tests::pipeline::{RunningResponder, alert, slack_sink};
use hemostat_tests::{
    Patient, PatientSpec, RunningMonitor, StreamReader, TestRedis, docker, init_logs, random_id,
};

const HOST_A: &str = "host-a";
const HOST_B: &str = "host-b";

/// A line only B's patient prints, to see whether B's logs reach the LLM.
const B_LINE: &str = "only-on-engine-b";
/// A line only A's same-named patient prints: it must never reach a prompt about B's.
const A_LINE: &str = "only-on-engine-a";

/// (StartedAt, RestartCount) of a container.
async fn started(docker: &Docker, id: &str) -> (String, i64) {
    let i = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    (
        i.state.and_then(|s| s.started_at).unwrap_or_default(),
        i.restart_count.unwrap_or(0),
    )
}

/// The container name an envelope is about, if any.
fn about(e: &Envelope) -> Option<String> {
    match &e.payload {
        Payload::ContainerUnhealthy(a)
        | Payload::ContainerUserAction(a)
        | Payload::ContainerRecovered(a) => Some(a.container.name.clone()),
        Payload::RemediationNeeded(r) => r.container.as_ref().map(|c| c.name.clone()),
        Payload::FalseAlarm(f) => f.container.as_ref().map(|c| c.name.clone()),
        Payload::RemediationComplete(r) => r.container.as_ref().map(|c| c.name.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_on_one_engine_is_healed_there_only() {
    init_logs();
    let began = Instant::now();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let Some(docker_a) = docker().await else {
        return;
    };
    let Some(b) = SecondEngine::start() else {
        return;
    };
    let docker_b = b.docker().await;
    let host_b = b.docker_host();
    let url = redis.url();

    // Same name on both engines, both in scope.
    let prefix = format!("hs2e-{}", random_id());
    let pa = Patient::start(
        &docker_a,
        &prefix,
        "twin",
        PatientSpec::watched(&["run", "--log-lines-at-start", A_LINE]),
    )
    .await;
    let pb = Patient::start(
        &docker_b,
        &prefix,
        "twin",
        SecondEngine::spec(PatientSpec::watched(&[
            "run",
            "--log-lines-at-start",
            B_LINE,
        ])),
    )
    .await;
    assert_eq!(pa.name, pb.name);
    let name = pa.name.clone();

    let stub = OpenAiStub::start(vec![], Reply::good_restart()).await;
    // The analyzer has no Docker at all: what it knows of B's container came from B's monitor.
    let analyzer = RunningAnalyzer::start(
        &url,
        &[
            "--openai-base-url",
            &stub.base_url(),
            "--openai-api-key",
            "test-key-not-secret",
            "--llm-model",
            "stub-model-7",
            "--llm-timeout",
            "5s",
        ],
    )
    .await;
    let (slack_addr, slack) = slack_sink().await;
    let (alert_stop, alert_done) = alert(&url, &format!("http://{slack_addr}/hook")).await;
    let resp_a = RunningResponder::start_on(&url, HOST_A, &[], None).await;
    let resp_b = RunningResponder::start_on(&url, HOST_B, &["--docker-host", &host_b], None).await;
    let mon_a = RunningMonitor::start_on(&url, HOST_A, &[]).await;
    let mon_b = RunningMonitor::start_on(&url, HOST_B, &["--docker-host", &host_b]).await;

    let before_a = started(&docker_a, &pa.id).await;
    let before_b = started(&docker_b, &pb.id).await;
    b.cli(&["kill", &pb.id]).expect("docker -H B kill");

    // B's responder brings B's container back.
    let mut done = StreamReader::new(&redis, Channel::RemediationComplete);
    let complete = done
        .wait_for(Duration::from_secs(60), "B's twin restarted", |e| {
            about(e).as_deref() == Some(name.as_str())
                && matches!(&e.payload, Payload::RemediationComplete(r)
                    if r.outcome == hemostat_common::events::Outcome::Success)
        })
        .await;
    assert_eq!(complete.host, HOST_B, "{complete:#?}");
    let after_b = started(&docker_b, &pb.id).await;
    assert_ne!(after_b.0, before_b.0, "B's twin was not started again");

    // The alert service tells Slack, naming host B.
    let deadline = Instant::now() + Duration::from_secs(20);
    let slack_text = loop {
        let got = slack.lock().unwrap().clone();
        if let Some(m) = got.iter().find(|m| m.contains(&name)) {
            break m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no Slack message about {name}: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A grouped message may also carry other news (a host's disk use, say); every line about
    // the twin names host B and only host B.
    let lines: Vec<&str> = slack_text
        .split(['\n', '"'])
        .filter(|l| l.contains(&name))
        .collect();
    assert!(!lines.is_empty(), "{slack_text}");
    for l in &lines {
        assert!(
            l.contains(HOST_B) && !l.contains(HOST_A),
            "{l}: {slack_text}"
        );
    }

    // A little longer, so a wrong-host action would have had time to show.
    let mut streams: Vec<StreamReader> = [
        Channel::HealthAlert,
        Channel::RemediationNeeded,
        Channel::FalseAlarm,
        Channel::RemediationComplete,
        Channel::Alerts,
    ]
    .into_iter()
    .map(|c| StreamReader::new(&redis, c))
    .collect();
    let mut all = Vec::new();
    for s in &mut streams {
        all.extend(
            s.collect_for(Duration::from_millis(700), |e| {
                about(e).as_deref() == Some(name.as_str())
            })
            .await,
        );
    }
    assert!(!all.is_empty());
    for e in &all {
        assert_eq!(
            e.host, HOST_B,
            "a message about the twin names another host: {e:#?}"
        );
        if let Payload::RemediationNeeded(r) = &e.payload {
            assert_eq!(r.target_host, HOST_B, "{e:#?}");
        }
        if let Payload::RemediationComplete(r) = &e.payload {
            assert_eq!(
                r.container.as_ref().map(|c| c.id.as_str()),
                Some(pb.id.as_str())
            );
        }
    }
    // A's twin is untouched.
    assert_eq!(started(&docker_a, &pa.id).await, before_a);
    assert_eq!(before_a.1, 0);

    // What the LLM was asked: about B's container, with B's log lines (read by B's monitor and
    // carried in the alert), never A's same-named container's.
    let prompts = stub.requests();
    assert!(!prompts.is_empty(), "the analyzer never asked the LLM");
    assert!(prompts.iter().all(|p| p.contains(&name)), "{prompts:#?}");
    assert!(
        prompts.iter().any(|p| p.contains(B_LINE)),
        "B's log line never reached the LLM: {prompts:#?}"
    );
    assert!(
        !prompts.iter().any(|p| p.contains(A_LINE)),
        "A's log line reached a prompt about B's container: {prompts:#?}"
    );

    // Any host's logs on demand, as the dashboard and `hemostat-monitor ask` get them: each
    // host's monitor answers for its own engine, so the same name gives each host's own lines.
    let bus = hemostat_common::bus::Bus::connect(
        &url,
        10_000,
        hemostat_common::metrics::AgentMetrics::default(),
        hemostat_common::http::Health::default(),
        &hemostat_common::shutdown::Shutdown::new(),
    )
    .await
    .expect("bus");
    for (host, mine, theirs) in [(HOST_B, B_LINE, A_LINE), (HOST_A, A_LINE, B_LINE)] {
        let reply = ask::ask(
            &bus,
            host,
            ask::Query::Logs {
                container: name.clone(),
                tail: Some(50),
                since: None,
            },
            Duration::from_secs(10),
            "two-engines-test",
        )
        .await
        .unwrap_or_else(|e| panic!("{host} did not answer: {e}"));
        assert_eq!(reply.host, host);
        match reply.result {
            ask::Answer::Logs { lines, .. } => {
                assert!(lines.iter().any(|l| l.contains(mine)), "{host}: {lines:?}");
                assert!(
                    !lines.iter().any(|l| l.contains(theirs)),
                    "{host}: {lines:?}"
                );
            }
            other => panic!("{host} answered {other:?}"),
        }
    }

    assert!(mon_a.stop().await);
    assert!(mon_b.stop().await);
    assert!(resp_a.stop().await);
    assert!(resp_b.stop().await);
    assert!(analyzer.stop().await);
    alert_stop.cancel();
    assert!(alert_done.await.unwrap());
    drop(pb);
    drop(pa);
    drop(b);
    eprintln!("two_engines: took {:?}", began.elapsed());
}
