//! Redis high availability: the whole pipeline (monitor → analyzer → responder → alert) runs
//! against a real Sentinel cluster on loopback (a master, a replica, three sentinels), the
//! master is SIGKILLed, and the agents follow the promoted replica: a container killed after
//! the failover is healed on the new master, and no remediation ever runs twice.
//!
//! Replication is asynchronous, so a write the old master acknowledged just before it died
//! may be missing on the new master. The test therefore asserts nothing about the last
//! moments before the kill; it asserts what happens after the failover (the agents write to
//! the new master, a new death is healed there) and, from Docker's own event history, that
//! every kill was answered by exactly one restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::InspectContainerOptions;
use chrono::Utc;
use hemostat_common::events::{Action, Channel, Outcome};
use hemostat_tests::openai_stub::RunningAnalyzer;
use hemostat_tests::pipeline::RunningResponder;
use hemostat_tests::records::{self, engine_to_ourselves, result_of, status};
use hemostat_tests::sentinel::SentinelCluster;
use hemostat_tests::{
    Patient, PatientSpec, RunningMonitor, StreamReader, docker, ensure_patient_image, init_logs,
    random_id,
};

const WAIT: Duration = Duration::from_secs(40);

fn client(port: u16) -> redis::Client {
    redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap()
}

/// Waits until each of `agents` has put a heartbeat stamped after `since` on the server at
/// `port`, and returns when that was seen.
async fn heartbeats_after(port: u16, agents: &[&str], since: chrono::DateTime<Utc>) -> Instant {
    let mut reader = StreamReader::from_client(client(port), Channel::Heartbeat);
    let deadline = Instant::now() + WAIT;
    loop {
        reader.poll().await;
        let missing: Vec<&&str> = agents
            .iter()
            .filter(|a| {
                !reader
                    .seen
                    .iter()
                    .any(|e| e.agent == **a && e.timestamp > since)
            })
            .collect();
        if missing.is_empty() {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat on the new master from {missing:?} within {WAIT:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_follows_a_failover_and_acts_once() {
    init_logs();
    let Some(mut cluster) = SentinelCluster::start() else {
        return;
    };
    let Some(docker) = docker().await else {
        return;
    };
    if !engine_to_ourselves() {
        return;
    }
    ensure_patient_image();
    let prefix = format!("hssent-{}", random_id());
    let scope = format!("hemostat.test={prefix}");
    // REDIS_URL's host and port are ignored under Sentinel; it is the first master's here so
    // the test helpers that read it before the failover find the groups.
    let url = cluster.master_url();
    let mut flags: Vec<String> = cluster.agent_flags();
    flags.extend(["--scope-label".into(), scope.clone()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sentinel_only: Vec<&str> = flags[..4].to_vec();

    let monitor = RunningMonitor::start(&url, &flags).await;
    let analyzer = RunningAnalyzer::start(&url, &sentinel_only).await;
    let responder = RunningResponder::start(&url, &flags).await;
    let started = Utc::now();

    // Before the failover: one death, one heal.
    let patient = Patient::start(&docker, &prefix, "patient", PatientSpec::watched(&["run"])).await;
    let inspect = |d: &bollard::Docker, id: String| {
        let d = d.clone();
        async move {
            d.inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .unwrap()
        }
    };
    let mut before = StreamReader::from_client(
        client(cluster.first_master_port()),
        Channel::RemediationComplete,
    );
    patient.cli(&["kill"]);
    let first = before
        .wait_for(WAIT, "the heal before the failover", |e| {
            result_of(e).is_some_and(|r| {
                r.container.as_ref().is_some_and(|c| c.name == patient.name)
                    && r.outcome == Outcome::Success
            })
        })
        .await;
    let first_request = result_of(&first).unwrap().request_id.clone();
    assert_eq!(
        status(&inspect(&docker, patient.id.clone()).await),
        "running"
    );

    // The failover.
    let old = cluster.first_master_port();
    let killed_at = Utc::now();
    let kill_instant = Instant::now();
    cluster.kill_master();
    let new = cluster.wait_for_new_master(old, Duration::from_secs(30));
    let promoted = kill_instant.elapsed();
    assert_eq!(new, cluster.replica_port());
    let all_writing = heartbeats_after(new, &["monitor", "analyzer", "responder"], killed_at)
        .await
        .duration_since(kill_instant);
    eprintln!(
        "sentinel failover: replica promoted {promoted:?} after the master was killed; \
         every agent writing to it after {all_writing:?}"
    );

    // After the failover: a second death is healed, reported on the new master.
    let mut after = StreamReader::from_client(client(new), Channel::RemediationComplete);
    let second_kill = Utc::now();
    patient.cli(&["kill"]);
    let second = after
        .wait_for(WAIT, "the heal after the failover", |e| {
            result_of(e).is_some_and(|r| {
                r.container.as_ref().is_some_and(|c| c.name == patient.name)
                    && r.outcome == Outcome::Success
                    && r.request_id != first_request
            })
        })
        .await;
    assert!(second.timestamp > second_kill);
    assert_eq!(
        status(&inspect(&docker, patient.id.clone()).await),
        "running"
    );

    // Let any duplicate surface before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    after.poll().await;

    // Docker's own record: two kills, two restarts.
    assert_eq!(
        records::count_events(&docker, &patient.id, "restart", started).await,
        2,
        "each kill is answered by exactly one restart"
    );
    // The new master's records: no request reported done twice, none audited as two restarts.
    let mut successes: HashMap<String, usize> = HashMap::new();
    for r in after.seen.iter().filter_map(result_of) {
        if r.outcome == Outcome::Success {
            *successes.entry(r.request_id.clone()).or_default() += 1;
        }
    }
    assert!(
        successes.values().all(|n| *n == 1),
        "a request reported twice: {successes:?}"
    );
    let mut restarts: HashMap<String, usize> = HashMap::new();
    for env in records::audit(&client(new)).await {
        if let Some(r) = result_of(&env)
            && r.action == Action::Restart
            && r.outcome == Outcome::Success
        {
            *restarts.entry(r.request_id.clone()).or_default() += 1;
        }
    }
    assert!(
        restarts.values().all(|n| *n == 1),
        "a restart audited twice: {restarts:?}"
    );
    assert_eq!(
        restarts.get(&result_of(&second).unwrap().request_id),
        Some(&1)
    );

    assert!(responder.stop().await, "the responder stops cleanly");
    assert!(analyzer.stop().await, "the analyzer stops cleanly");
    assert!(monitor.stop().await, "the monitor stops cleanly");
}
