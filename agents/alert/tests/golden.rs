//! The Slack payload of every kind of notification, checked against golden files in
//! `tests/golden/` and against Block Kit's structural rules, and every format's payload for
//! a container whose health check and logs say hostile things. Regenerate after an intended
//! change with `UPDATE_GOLDEN=1 cargo test -p hemostat-alert --test golden`, then review the diff.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use hemostat_alert::engine::Batch;
use hemostat_alert::notify::{Sources, from_envelope, with_verdict};
use hemostat_alert::render::{
    RenderContext, check_block_kit, discord, json_body, ntfy, pagerduty, slack, teams,
};
use hemostat_common::events::{
    Action, AlertKind, AnalysisMethod, ContainerAlert, ContainerRef, ContainerState, Detection,
    Envelope, Escalation, EscalationKind, FalseAlarm, HostAlert, HostAlertKind, HostSample,
    Outcome, Payload, RemediationResult, SCHEMA_VERSION, Severity, Verification,
};

fn env(id: &str, agent: &str, payload: Payload) -> Envelope {
    Envelope {
        id: id.into(),
        timestamp: Utc
            .with_ymd_and_hms(2026, 11, 22, 6, 0, 0)
            .single()
            .unwrap_or_default(),
        agent: agent.into(),
        host: "docker-01".into(),
        schema_version: SCHEMA_VERSION,
        payload,
    }
}

fn container(name: &str) -> ContainerRef {
    ContainerRef {
        id: format!("{name}-0123456789"),
        name: name.into(),
        image: "example/api:1.4".into(),
        ..ContainerRef::default()
    }
}

fn alert(name: &str, kind: AlertKind, summary: &str) -> ContainerAlert {
    ContainerAlert {
        container: container(name),
        kind,
        severity: Severity::Critical,
        user_initiated: false,
        reminder: false,
        detected_by: Detection::Event,
        summary: summary.into(),
        state: Some(ContainerState {
            status: "exited".into(),
            exit_code: Some(137),
            ..ContainerState::default()
        }),
        metrics: None,
        breach: None,
        since: None,
        docker_event_time: None,
        protected: false,
        logs: None,
    }
}

fn result(outcome: Outcome, dry_run: bool, reason: &str) -> Payload {
    Payload::RemediationComplete(RemediationResult {
        container: Some(container("api")),
        request_id: "01REQ".into(),
        action: Action::Restart,
        outcome,
        reason: reason.into(),
        verification: Some(Verification {
            running: true,
            healthy: Some(true),
            waited_ms: 412,
            detail: "running and healthy".into(),
        }),
        duration_ms: 588,
        dry_run,
        guard: None,
        problem: None,
    })
}

/// What a container can make its health check print or its logs say: Slack and Discord
/// mentions, a disguised link, a markdown link, formatting.
const HOSTILE: &str = "<!channel> see <http://evil.example|docs> *bold* @everyone [x](http://evil.example) `code` # h";

const ALL: Sources = Sources {
    crashes: true,
    false_alarms: true,
};

/// `(golden file name, envelopes that form one batch)`.
fn cases() -> Vec<(&'static str, Vec<Envelope>)> {
    vec![
        (
            "remediation_success",
            vec![env(
                "01A",
                "responder",
                result(
                    Outcome::Success,
                    false,
                    "restarted api in 0.4 s; verification: running and healthy",
                ),
            )],
        ),
        (
            "remediation_failed_dry_run",
            vec![env(
                "01B",
                "responder",
                result(
                    Outcome::Failed,
                    true,
                    "verification timed out after 60s: exited (exit code 1)",
                ),
            )],
        ),
        (
            "remediation_rejected",
            vec![env(
                "01C",
                "responder",
                result(
                    Outcome::Rejected,
                    false,
                    "container is protected (hemostat.protect=true or a hemostat service): alert only, never touched",
                ),
            )],
        ),
        (
            "escalation_breaker",
            vec![env(
                "01D",
                "responder",
                Payload::Escalation(Escalation {
                    proposal: None,
                    kind: EscalationKind::CircuitBreakerOpen,
                    severity: Severity::Critical,
                    container: Some(container("api")),
                    summary: "api was remediated 5 times in 30 min; hemostat stopped trying".into(),
                    detail: "a person must look; reset with `hemostat-responder reset-breaker`"
                        .into(),
                }),
            )],
        ),
        (
            "crash",
            vec![env(
                "01E",
                "monitor",
                Payload::ContainerUnhealthy(alert(
                    "api",
                    AlertKind::Died,
                    "container api died (exit code 3)",
                )),
            )],
        ),
        (
            "oom_killed",
            vec![env(
                "01F",
                "monitor",
                Payload::ContainerUnhealthy(alert(
                    "api",
                    AlertKind::OomKilled,
                    "container api was killed by the OOM killer at its 256 MiB limit",
                )),
            )],
        ),
        (
            "recovered",
            vec![env(
                "01G",
                "monitor",
                Payload::ContainerRecovered(alert(
                    "api",
                    AlertKind::Unhealthy,
                    "container api is healthy again",
                )),
            )],
        ),
        (
            "host_disk_pressure",
            vec![env(
                "01H",
                "monitor",
                Payload::HostUnhealthy(HostAlert {
                    kind: HostAlertKind::DiskPressure,
                    severity: Severity::Warning,
                    summary: "host disk use is 92.4 %, over 90 %".into(),
                    reminder: false,
                    sample: HostSample::default(),
                    threshold: Some(90.0),
                }),
            )],
        ),
        (
            "false_alarm",
            vec![env(
                "01I",
                "analyzer",
                Payload::FalseAlarm(FalseAlarm {
                    container: Some(container("batch")),
                    alert_id: "01X".into(),
                    root_cause:
                        "the process exited cleanly (exit code 0): a finished job, not a crash"
                            .into(),
                    reason: "rule clean_exit (kind=died, exit_code=0)".into(),
                    confidence: 0.85,
                    analysis_method: AnalysisMethod::Rules,
                }),
            )],
        ),
        (
            "grouped_two_containers",
            vec![
                env(
                    "01J",
                    "monitor",
                    Payload::ContainerUnhealthy(alert(
                        "web",
                        AlertKind::Died,
                        "container web died (exit code 1)",
                    )),
                ),
                env(
                    "01K",
                    "monitor",
                    Payload::ContainerUnhealthy(alert(
                        "db",
                        AlertKind::Died,
                        "container db died (exit code 1)",
                    )),
                ),
            ],
        ),
        (
            // The analyzer quotes the health check's output in its root cause and a log
            // line in its reason: so they reach the title, the detail and the root cause.
            "hostile_container_text",
            vec![env(
                "01L",
                "analyzer",
                Payload::FalseAlarm(FalseAlarm {
                    container: Some(container("api")),
                    alert_id: "01Y".into(),
                    root_cause: format!("the health check prints: {HOSTILE}"),
                    reason: format!("last log line: {HOSTILE}"),
                    confidence: 0.6,
                    analysis_method: AnalysisMethod::Llm,
                }),
            )],
        ),
    ]
}

fn batch(envs: &[Envelope]) -> Batch {
    Batch {
        notifications: envs
            .iter()
            .map(|e| {
                let n = from_envelope(e, ALL)
                    .unwrap_or_else(|| panic!("{} makes no notification", e.id));
                if e.agent == "responder" && matches!(e.payload, Payload::RemediationComplete(_)) {
                    with_verdict(
                        n,
                        "the process crashed with exit code 1",
                        0.85,
                        AnalysisMethod::Llm,
                    )
                } else {
                    n
                }
            })
            .collect(),
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `text` with golden file `file` (or writes it, with `UPDATE_GOLDEN`); a difference
/// is added to `mismatches`.
fn golden(file: &str, text: &str, mismatches: &mut Vec<String>) {
    let path = golden_dir().join(file);
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if want != text {
        mismatches.push(format!(
            "{file}: differs from {}\n--- got ---\n{text}",
            path.display()
        ));
    }
}

/// `v` as pretty JSON, with the invisible characters the escaping inserts written as JSON
/// escapes (the same JSON), so a reader of the golden files sees where they are.
fn pretty(v: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    format!(
        "{}\n",
        text.replace('\u{200B}', "\\u200b")
            .replace('\u{AD}', "\\u00ad")
    )
}

#[test]
fn slack_payloads_match_their_golden_files_and_block_kit() {
    let ctx = RenderContext {
        approval_key: None,
        dashboard_url: Some("http://hemostat.example:8080".into()),
    };
    let mut mismatches = Vec::new();
    for (name, envs) in cases() {
        let payload = slack(&batch(&envs), &ctx);
        if let Err(e) = check_block_kit(&payload) {
            panic!("{name}: not valid Block Kit: {e}\n{payload:#}");
        }
        golden(
            &format!("slack_{name}.json"),
            &pretty(&payload),
            &mut mismatches,
        );
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn hostile_container_text_is_escaped_for_every_format() {
    let ctx = RenderContext {
        approval_key: None,
        dashboard_url: Some("http://hemostat.example:8080".into()),
    };
    let (_, envs) = cases()
        .into_iter()
        .find(|(n, _)| *n == "hostile_container_text")
        .unwrap_or_else(|| unreachable!());
    let b = batch(&envs);
    let mut mismatches = Vec::new();
    // (Slack's is among the cases above.)
    golden(
        "discord_hostile_container_text.json",
        &pretty(&discord(&b, &ctx)),
        &mut mismatches,
    );
    golden(
        "teams_hostile_container_text.json",
        &pretty(&teams(&b, &ctx)),
        &mut mismatches,
    );
    let (body, headers) = ntfy(&b, &ctx);
    let mut request: String = headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    request.push('\n');
    request.push_str(&body);
    request.push('\n');
    golden("ntfy_hostile_container_text.txt", &request, &mut mismatches);
    golden(
        "json_hostile_container_text.json",
        &pretty(&json_body(&b)),
        &mut mismatches,
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn grouped_messages_name_every_container() {
    let (_, envs) = cases()
        .into_iter()
        .find(|(n, _)| *n == "grouped_two_containers")
        .unwrap_or_else(|| unreachable!());
    let b = batch(&envs);
    let ctx = RenderContext::default();
    let s = slack(&b, &ctx).to_string();
    let d = discord(&b, &ctx).to_string();
    let t = teams(&b, &ctx).to_string();
    let (body, _) = ntfy(&b, &ctx);
    for rendered in [&s, &d, &t, &body] {
        assert!(
            rendered.contains("web") && rendered.contains("db"),
            "{rendered}"
        );
    }
}

#[test]
fn other_presets_have_their_shapes() {
    let (_, envs) = cases().remove(1);
    let b = batch(&envs);
    let ctx = RenderContext::default();
    let d = discord(&b, &ctx);
    // Escaped as the rest of the title is (Discord shows `[dry run]`).
    assert!(
        d["content"]
            .as_str()
            .is_some_and(|c| c.len() <= 2000 && c.contains(r"\[dry run\]"))
    );
    assert_eq!(d["allowed_mentions"]["parse"], serde_json::json!([]));
    assert!(d["embeds"][0]["color"].as_u64().is_some());
    let t = teams(&b, &ctx);
    assert_eq!(t["@type"], "MessageCard");
    let (_, headers) = ntfy(&b, &ctx);
    let get = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| *h == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("Priority"), "5");
    assert!(get("Title").is_ascii() && get("Title").contains("Restart of api failed"));
    // PagerDuty: a failed remediation triggers; a recovery resolves the same dedup key.
    let trigger = pagerduty(&b.notifications[0], "KEY").unwrap_or_default();
    assert_eq!(trigger["event_action"], "trigger");
    let (_, rec) = cases()
        .into_iter()
        .find(|(n, _)| *n == "recovered")
        .unwrap_or_else(|| unreachable!());
    let resolve = pagerduty(&batch(&rec).notifications[0], "KEY").unwrap_or_default();
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(trigger["dedup_key"], resolve["dedup_key"]);
    // A plain success is not a page.
    let (_, ok) = cases().remove(0);
    assert!(pagerduty(&batch(&ok).notifications[0], "KEY").is_none());
}
