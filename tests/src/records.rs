//! What tests read back to prove a claim: Docker's own records (inspect fields, its event
//! history) and the payloads of the bus's envelopes.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::EventsOptionsBuilder;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use hemostat_common::events::{
    AUDIT_STREAM, Envelope, Escalation, Payload, RemediationResult, STREAM_FIELD_ENVELOPE,
};

/// The result inside a `remediation_complete` envelope.
pub fn result_of(e: &Envelope) -> Option<&RemediationResult> {
    match &e.payload {
        Payload::RemediationComplete(r) => Some(r),
        _ => None,
    }
}

/// The escalation inside an `escalation` envelope.
pub fn escalation_of(e: &Envelope) -> Option<&Escalation> {
    match &e.payload {
        Payload::Escalation(x) => Some(x),
        _ => None,
    }
}

/// `running`, `exited`, `paused`...
pub fn status(i: &ContainerInspectResponse) -> String {
    i.state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// `starting`, `healthy`, `unhealthy`, or `None` without a health check.
pub fn health(i: &ContainerInspectResponse) -> Option<String> {
    i.state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .map(|s| s.to_string())
}

/// The last exit code (-1 when there is none).
pub fn exit_code(i: &ContainerInspectResponse) -> i64 {
    i.state.as_ref().and_then(|s| s.exit_code).unwrap_or(-1)
}

fn time_field(raw: Option<&str>, what: &str) -> DateTime<Utc> {
    raw.and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what} is not a time: {raw:?}"))
}

pub fn started_at(i: &ContainerInspectResponse) -> DateTime<Utc> {
    time_field(
        i.state.as_ref().and_then(|s| s.started_at.as_deref()),
        "StartedAt",
    )
}

pub fn finished_at(i: &ContainerInspectResponse) -> DateTime<Utc> {
    time_field(
        i.state.as_ref().and_then(|s| s.finished_at.as_deref()),
        "FinishedAt",
    )
}

pub fn created_at(i: &ContainerInspectResponse) -> DateTime<Utc> {
    time_field(i.created.as_deref(), "Created")
}

/// Docker's own record: how many `action` events container `id` had since `since`.
pub async fn count_events(docker: &Docker, id: &str, action: &str, since: DateTime<Utc>) -> usize {
    let now = Utc::now();
    let mut filters = HashMap::new();
    filters.insert("container", vec![id]);
    filters.insert("event", vec![action]);
    let since_ns = since.timestamp_nanos_opt().unwrap_or(0);
    let opts = EventsOptionsBuilder::new()
        .since(&format!(
            "{}.{:09}",
            since_ns / 1_000_000_000,
            since_ns % 1_000_000_000
        ))
        .until(&format!(
            "{}.{:09}",
            now.timestamp(),
            now.timestamp_subsec_nanos()
        ))
        .filters(&filters)
        .build();
    let events = tokio::time::timeout(
        Duration::from_secs(10),
        docker.events(Some(opts)).collect::<Vec<_>>(),
    )
    .await
    .expect("docker events answered");
    events
        .into_iter()
        .map(|e| e.expect("event"))
        .filter(|e| e.action.as_deref() == Some(action))
        .count()
}

/// The audit stream, oldest first.
pub async fn audit(client: &redis::Client) -> Vec<Envelope> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(AUDIT_STREAM)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE audit");
    reply
        .ids
        .iter()
        .map(|e| {
            let raw: String = e.get(STREAM_FIELD_ENVELOPE).expect("an envelope field");
            Envelope::from_json(&raw).expect("audit entries decode")
        })
        .collect()
}

/// The dead-letter stream's entries (their fields), oldest first.
pub async fn dead_letters(client: &redis::Client) -> Vec<HashMap<String, String>> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(hemostat_common::events::DEAD_LETTER_STREAM)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE dead letters");
    reply
        .ids
        .iter()
        .map(|e| {
            e.map
                .keys()
                .map(|k| (k.clone(), e.get::<String>(k).unwrap_or_default()))
                .collect()
        })
        .collect()
}

/// Whether this engine is free of other hemostat responders, which would act on a test's
/// `hemostat.enable=true` containers. When it is not, says so through [`crate::require`]
/// (a failure under `CI=true`, a loud skip otherwise) and returns false.
pub fn engine_to_ourselves() -> bool {
    let foreign = foreign_responders();
    if foreign.is_empty() {
        return true;
    }
    crate::require(
        "a Docker engine without other hemostat responders",
        &format!(
            "{foreign} would act on this test's hemostat.enable=true containers (stop that \
             stack, or wait for the end-to-end test to finish)"
        ),
    );
    false
}

/// Names of hemostat responders running in containers on this engine (a compose stack, the
/// end-to-end test's): they act on every `hemostat.enable=true` container, a test's too.
pub fn foreign_responders() -> String {
    Command::new("docker")
        .args([
            "ps",
            "--filter",
            "label=hemostat.role=responder",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
