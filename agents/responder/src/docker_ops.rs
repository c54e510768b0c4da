//! The responder's Docker calls: the only code in hemostat that changes a container. Each
//! write carries a client timeout longer than the container's own stop timeout, so a slow stop
//! is never reported as a failure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    PruneImagesOptionsBuilder, RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hemostat_common::events::Verification;
use hemostat_common::scope;

/// Slack added on top of a stop timeout for the Docker API call itself.
const API_SLACK: Duration = Duration::from_secs(30);

/// The container's stop timeout: its `hemostat.stop_timeout` label (seconds) or the default.
pub fn stop_timeout(labels: &HashMap<String, String>, default: Duration) -> Duration {
    labels
        .get(scope::LABEL_STOP_TIMEOUT)
        .and_then(|v| v.trim().trim_end_matches('s').parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)))
        .unwrap_or(default)
}

/// A client whose request timeout outlasts `stop` by a margin.
fn client_for(docker: &Docker, stop: Duration) -> Docker {
    docker.clone().with_timeout(stop + API_SLACK)
}

pub async fn inspect(
    docker: &Docker,
    id: &str,
) -> Result<ContainerInspectResponse, bollard::errors::Error> {
    docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
}

pub fn labels(i: &ContainerInspectResponse) -> HashMap<String, String> {
    i.config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
}

pub fn name(i: &ContainerInspectResponse) -> String {
    i.name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned()
}

pub fn status(i: &ContainerInspectResponse) -> String {
    i.state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

pub fn has_healthcheck(i: &ContainerInspectResponse) -> bool {
    i.state.as_ref().and_then(|s| s.health.as_ref()).is_some()
}

pub async fn restart(
    docker: &Docker,
    id: &str,
    stop: Duration,
) -> Result<(), bollard::errors::Error> {
    let opts = RestartContainerOptionsBuilder::new()
        .t(stop.as_secs() as i32)
        .build();
    client_for(docker, stop)
        .restart_container(id, Some(opts))
        .await
}

pub async fn stop(docker: &Docker, id: &str, stop: Duration) -> Result<(), bollard::errors::Error> {
    let opts = StopContainerOptionsBuilder::new()
        .t(stop.as_secs() as i32)
        .build();
    client_for(docker, stop)
        .stop_container(id, Some(opts))
        .await
}

pub async fn start(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    docker
        .start_container(id, None::<StartContainerOptions>)
        .await
}

/// Whether a person stopped the container since it last started: Docker records `docker stop`
/// (and `docker compose stop`) as a `stop` event, which a crash, an OOM kill or `docker kill`
/// never produce.
pub async fn stopped_by_a_person(docker: &Docker, i: &ContainerInspectResponse) -> bool {
    let Some(id) = i.id.as_deref() else {
        return false;
    };
    let started: Option<DateTime<Utc>> = i
        .state
        .as_ref()
        .and_then(|s| s.started_at.as_deref())
        .and_then(|s| s.parse().ok());
    let since = started
        .map(|t| t.timestamp())
        .unwrap_or_else(|| Utc::now().timestamp() - 3600);
    let mut filters = HashMap::new();
    filters.insert("container", vec![id]);
    filters.insert("event", vec!["stop", "start"]);
    let opts = EventsOptionsBuilder::new()
        .since(&since.to_string())
        // Now, to the nanosecond: Docker holds an events call open until `until` has passed,
        // so a whole-second bound would add up to a second to every check.
        .until(&{
            let now = Utc::now();
            format!("{}.{:09}", now.timestamp(), now.timestamp_subsec_nanos())
        })
        .filters(&filters)
        .build();
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(5),
        docker.events(Some(opts)).take(1000).collect::<Vec<_>>(),
    )
    .await
    .unwrap_or_default();
    // The last of start/stop decides: a stop after the latest start is a person's stop.
    events
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.action)
        .next_back()
        .is_some_and(|a| a == "stop")
}

/// Waits (bounded) until the container runs, started after `acted_at`, and is healthy if it has
/// a health check. Returns the evidence either way.
pub async fn verify(
    docker: &Docker,
    id: &str,
    acted_at: DateTime<Utc>,
    timeout: Duration,
) -> Verification {
    let started = Instant::now();
    let mut last;
    loop {
        match inspect(docker, id).await {
            Ok(i) => {
                let st = i.state.clone().unwrap_or_default();
                let running = st.running.unwrap_or(false);
                let fresh = st
                    .started_at
                    .as_deref()
                    .and_then(|s| s.parse::<DateTime<Utc>>().ok())
                    .is_some_and(|t| t >= acted_at - chrono::Duration::seconds(1));
                let health = st
                    .health
                    .as_ref()
                    .and_then(|h| h.status)
                    .map(|s| s.to_string());
                let waited_ms = started.elapsed().as_millis() as u64;
                match (running && fresh, health.as_deref()) {
                    (true, None) | (true, Some("none")) => {
                        return Verification {
                            running: true,
                            healthy: None,
                            waited_ms,
                            detail: "running".into(),
                        };
                    }
                    (true, Some("healthy")) => {
                        return Verification {
                            running: true,
                            healthy: Some(true),
                            waited_ms,
                            detail: "running and healthy".into(),
                        };
                    }
                    (true, Some("unhealthy")) => {
                        return Verification {
                            running: true,
                            healthy: Some(false),
                            waited_ms,
                            detail: "running but its health check fails".into(),
                        };
                    }
                    (true, Some(h)) => last = format!("running, health {h}"),
                    (false, _) => {
                        last = format!(
                            "{} (exit code {})",
                            st.status.map(|s| s.to_string()).unwrap_or_default(),
                            st.exit_code.unwrap_or_default()
                        );
                    }
                }
            }
            Err(e) => last = format!("inspect failed: {e}"),
        }
        if started.elapsed() >= timeout {
            return Verification {
                running: last.starts_with("running"),
                healthy: None,
                waited_ms: started.elapsed().as_millis() as u64,
                detail: format!("timed out after {timeout:?}: {last}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Containers to restart after `parent`: those sharing its network namespace
/// (`network_mode: container:<parent>`) and those labelled `hemostat.depends_on=<parent name>`.
pub async fn dependents(
    docker: &Docker,
    parent_id: &str,
    parent_name: &str,
) -> Vec<(String, String)> {
    let Ok(list) = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await
    else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = list
        .into_iter()
        .filter_map(|c| {
            let id = c.id?;
            if id == parent_id {
                return None;
            }
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default();
            let mode = c
                .host_config
                .and_then(|h| h.network_mode)
                .unwrap_or_default();
            let shares_netns = mode
                .strip_prefix("container:")
                .is_some_and(|m| m == parent_id || m == parent_name || parent_id.starts_with(m));
            let declared = c
                .labels
                .as_ref()
                .and_then(|l| l.get(scope::LABEL_DEPENDS_ON))
                .is_some_and(|p| p == parent_name);
            (shares_netns || declared).then_some((id, name))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// What a cleanup removed.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub containers: Vec<String>,
    pub skipped: Vec<String>,
    pub images_deleted: usize,
    pub bytes_reclaimed: u64,
}

/// Removes exited in-scope, unprotected containers (their anonymous volumes only if
/// `volumes`), then dangling images. With `dry_run`, lists what it would remove.
pub async fn cleanup(
    docker: &Docker,
    monitor_all: bool,
    volumes: bool,
    dry_run: bool,
) -> Result<Cleaned, bollard::errors::Error> {
    let mut filters = HashMap::new();
    filters.insert("status", vec!["exited", "dead"]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let mut out = Cleaned::default();
    for c in list {
        let (Some(id), labels) = (c.id.clone(), c.labels.clone().unwrap_or_default()) else {
            continue;
        };
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| id.clone());
        if !scope::in_scope(&labels, monitor_all) || scope::is_protected(&labels) {
            out.skipped.push(name);
            continue;
        }
        if !dry_run {
            let opts = RemoveContainerOptionsBuilder::new()
                .v(volumes)
                .force(false)
                .build();
            if let Err(e) = docker.remove_container(&id, Some(opts)).await {
                tracing::warn!(container = %name, error = %e, "cleanup could not remove");
                out.skipped.push(name);
                continue;
            }
        }
        out.containers.push(name);
    }
    if !dry_run {
        // Only images dangling for an hour: a build in progress holds fresh dangling
        // intermediate images, and pruning them breaks it ("No such image").
        let mut dangling = HashMap::new();
        dangling.insert("dangling", vec!["true"]);
        dangling.insert("until", vec!["1h"]);
        let pruned = docker
            .prune_images(Some(
                PruneImagesOptionsBuilder::new().filters(&dangling).build(),
            ))
            .await?;
        out.images_deleted = pruned.images_deleted.map(|d| d.len()).unwrap_or(0);
        out.bytes_reclaimed = pruned.space_reclaimed.unwrap_or(0).max(0) as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_timeout_from_label() {
        let d = Duration::from_secs(10);
        let l = |v: &str| HashMap::from([(scope::LABEL_STOP_TIMEOUT.to_owned(), v.to_owned())]);
        assert_eq!(stop_timeout(&HashMap::new(), d), d);
        assert_eq!(stop_timeout(&l("20"), d), Duration::from_secs(20));
        assert_eq!(stop_timeout(&l("20s"), d), Duration::from_secs(20));
        assert_eq!(stop_timeout(&l("soon"), d), d);
        assert_eq!(stop_timeout(&l("99999"), d), Duration::from_secs(3600));
    }
}
