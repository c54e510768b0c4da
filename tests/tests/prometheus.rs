//! The fleet metrics as an SRE sees them: a real Prometheus (Debian's package) scraping a
//! running stack (monitor, analyzer, responder, alert agent on a real Redis and the real Docker
//! engine), with the shipped alert rules loaded. A test container is killed and healed, and the
//! numbers are read back through PromQL, not from the agents' memory: hemostat's restart count
//! of that container is 1, its time-to-recovery histogram has one observation, Docker's own
//! restart count is 0; removing the container makes its series disappear. The shipped Grafana
//! dashboard is checked for structure, and every query in it runs against this Prometheus and
//! names only metrics the exporters serve.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use bollard::query_parameters::RemoveContainerOptionsBuilder;
use hemostat_common::events::{Action, Channel, Outcome};
use hemostat_tests::openai_stub::RunningAnalyzer;
use hemostat_tests::pipeline::{RunningResponder, alert_serving, slack_sink};
use hemostat_tests::prometheus::TestPrometheus;
use hemostat_tests::records::{engine_to_ourselves, result_of};
use hemostat_tests::{
    Patient, PatientSpec, RunningMonitor, StreamReader, TestRedis, docker, ensure_patient_image,
    init_logs, random_id, repo_root,
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_a_kill_healed_once_and_a_removed_container_vanish() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let Some(docker) = docker().await else { return };
    if !engine_to_ourselves() {
        return;
    }
    ensure_patient_image();
    let prefix = format!("hsprom-{}", random_id());
    let scope = format!("hemostat.test={prefix}");
    let url = redis.url();

    let monitor = RunningMonitor::start(&url, &["--scope-label", &scope]).await;
    let analyzer = RunningAnalyzer::start(&url, &[]).await;
    let responder = RunningResponder::start(&url, &["--scope-label", &scope]).await;
    let (slack, _got) = slack_sink().await;
    let (_alert_stop, _alert_done, alert_http) =
        alert_serving(&url, &format!("http://{slack}/hook")).await;

    let rules = repo_root().join("deploy/prometheus/rules.yml");
    let Some(prom) = TestPrometheus::start(
        &[
            ("hemostat-monitor", monitor.http),
            ("hemostat-analyzer", analyzer.http),
            ("hemostat-responder", responder.http),
            ("hemostat-alert", alert_http),
        ],
        &[&rules],
    )
    .await
    else {
        return;
    };

    let victim = Patient::start(&docker, &prefix, "victim", PatientSpec::watched(&["run"])).await;
    let name = victim.name.clone();
    let sel = format!("{{container=\"{name}\"}}");

    // Up, healthy-less, and every series there from the start (zeros, not absent).
    prom.wait_for(
        &format!("hemostat_container_running{sel}"),
        "the victim seen running",
        WAIT,
        |r| r.len() == 1 && r[0].1 == 1.0,
    )
    .await;
    let running = prom
        .query(&format!("hemostat_container_running{sel}"))
        .await;
    let labels = &running[0].0;
    assert_eq!(labels["host"], "test-host");
    assert_eq!(labels["image"], hemostat_tests::PATIENT_IMAGE);
    assert_eq!(labels["job"], "hemostat-monitor");
    let health = prom
        .query(&format!("hemostat_container_health{sel} == 1"))
        .await;
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].0["status"], "none", "no health check: {health:?}");

    // Killed as a failure is, healed by the pipeline.
    let mut results = StreamReader::new(&redis, Channel::RemediationComplete);
    victim.cli(&["kill"]);
    let healed = results
        .wait_for(WAIT, "the victim restarted and verified", |e| {
            result_of(e).is_some_and(|r| {
                r.container.as_ref().is_some_and(|c| c.name == name)
                    && r.action == Action::Restart
                    && r.outcome == Outcome::Success
            })
        })
        .await;
    assert!(!result_of(&healed).unwrap().dry_run);

    let restarts = format!("hemostat_container_hemostat_restarts_total{sel}");
    let r = prom
        .wait_for(&restarts, "hemostat's restart counted", WAIT, |r| {
            r.len() == 1 && r[0].1 >= 1.0
        })
        .await;
    assert_eq!(r[0].1, 1.0, "hemostat restarted it once: {r:?}");
    assert_eq!(r[0].0["job"], "hemostat-responder");
    let ttr = prom
        .wait_for(
            &format!("hemostat_container_recovery_seconds_count{sel}"),
            "the recovery observed",
            WAIT,
            |r| r.len() == 1 && r[0].1 >= 1.0,
        )
        .await;
    assert_eq!(ttr[0].1, 1.0, "one recovery: {ttr:?}");
    let took = prom
        .query(&format!("hemostat_container_recovery_seconds_sum{sel}"))
        .await;
    assert!(
        took[0].1 > 0.0 && took[0].1 < WAIT.as_secs_f64(),
        "time to recovery {took:?}"
    );
    let detected = prom
        .wait_for(
            &format!("hemostat_container_detection_seconds_count{sel}"),
            "the death's detection observed",
            WAIT,
            |r| r.len() == 1 && r[0].1 >= 1.0,
        )
        .await;
    assert_eq!(detected[0].1, 1.0);
    let decisions = prom
        .query(&format!(
            "hemostat_container_remediations_total{{container=\"{name}\",action=\"restart\",outcome=\"success\"}}"
        ))
        .await;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].1, 1.0);
    // The restart was hemostat's, not the restart policy's (it has none).
    let by_docker = prom
        .query(&format!("hemostat_container_docker_restarts_total{sel}"))
        .await;
    assert_eq!(by_docker.len(), 1);
    assert_eq!(by_docker[0].1, 0.0);
    prom.wait_for(
        &format!("hemostat_container_running{sel}"),
        "the victim seen running again",
        WAIT,
        |r| r.len() == 1 && r[0].1 == 1.0,
    )
    .await;
    // The breaker is a series too, closed.
    let breaker = prom
        .query(&format!("hemostat_container_breaker_open{sel}"))
        .await;
    assert_eq!(breaker.len(), 1);
    assert_eq!(breaker[0].1, 0.0);

    // Several more scrapes later, still exactly one: nothing counted twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(prom.query(&restarts).await[0].1, 1.0);

    check_rules_loaded(&prom).await;
    check_grafana_dashboard(&prom).await;

    // Removed: every series of it disappears, from both exporters.
    docker
        .remove_container(
            &victim.id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
        .unwrap();
    prom.wait_for(
        &format!("{{__name__=~\"hemostat_container_.+\",container=\"{name}\"}}"),
        "the removed container's series gone",
        WAIT,
        |r| r.is_empty(),
    )
    .await;

    drop(prom);
    assert!(monitor.stop().await);
    assert!(responder.stop().await);
    analyzer.shutdown.cancel();
}

/// The shipped rules load and evaluate without error against real series.
async fn check_rules_loaded(prom: &TestPrometheus) {
    let data = prom.api("rules", &[]).await;
    let groups = data["groups"].as_array().unwrap();
    let rules: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .collect();
    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    for want in [
        "HemostatDown",
        "HemostatBreakerOpen",
        "HemostatCrashLoop",
        "HemostatRemediationFailing",
        "HemostatRedisMemoryHigh",
    ] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    for r in rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed to evaluate: {r}",
            r["name"]
        );
    }
    // Every agent scraped is up, so nothing says hemostat is down.
    let down = prom.query("ALERTS{alertname=\"HemostatDown\"}").await;
    assert!(down.is_empty(), "{down:?}");
}

/// The dashboard JSON has the structure Grafana imports, and each of its queries runs here and
/// names only metrics the exporters serve.
async fn check_grafana_dashboard(prom: &TestPrometheus) {
    let path = repo_root().join("deploy/grafana/hemostat.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let served: BTreeSet<String> = prom
        .api("label/__name__/values", &[])
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids repeat: {title}"
        );
        assert!(p["type"].as_str().is_some(), "{title}: no type");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                t["refId"].as_str().is_some(),
                "{title}: a target without refId"
            );
            for var in find_vars(expr) {
                assert!(
                    var.starts_with("__") || vars.contains(var.as_str()),
                    "{title}: ${var} is not a dashboard variable ({vars:?})"
                );
            }
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$host", ".*")
                .replace("$container", ".*");
            // Runs: Prometheus answers `success` (the helper asserts it).
            prom.api("query", &[("query", &q)]).await;
            for m in metric_names(&q) {
                assert!(
                    served.contains(&m),
                    "{title}: `{expr}` names {m}, which no exporter serves"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");
}

/// `$name` variables in a query.
fn find_vars(expr: &str) -> Vec<String> {
    expr.split('$')
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The metric names a query reads: `hemostat_*` words, and `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("hemostat_") || word == "up" {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}
