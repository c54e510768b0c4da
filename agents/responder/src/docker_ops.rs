//! The responder's Docker calls: the only code in hemostat that changes a container. Each
//! write carries a client timeout longer than the container's own stop timeout, so a slow stop
//! is never reported as a failure.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    PruneImagesOptionsBuilder, RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hemostat_common::scope::{self, Scope};

use crate::guards::Container;

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

/// A listed container's name, without Docker's leading `/`.
pub fn summary_name(c: &bollard::models::ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_owned())
        .unwrap_or_default()
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

/// Containers to restart after `parent`: those sharing its network namespace
/// (`network_mode: container:<parent>`) and those labelled `hemostat.depends_on=<parent name>`,
/// as `(id, name, labels)`, by name.
pub async fn dependents(
    docker: &Docker,
    parent_id: &str,
    parent_name: &str,
) -> Vec<(String, String, HashMap<String, String>)> {
    let Ok(list) = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await
    else {
        return Vec::new();
    };
    let mut out: Vec<(String, String, HashMap<String, String>)> = list
        .into_iter()
        .filter_map(|c| {
            let name = summary_name(&c);
            let id = c.id?;
            if id == parent_id {
                return None;
            }
            let mode = c
                .host_config
                .and_then(|h| h.network_mode)
                .unwrap_or_default();
            let shares_netns = mode
                .strip_prefix("container:")
                .is_some_and(|m| m == parent_id || m == parent_name || parent_id.starts_with(m));
            let labels = c.labels.unwrap_or_default();
            let declared = labels
                .get(scope::LABEL_DEPENDS_ON)
                .is_some_and(|p| p == parent_name);
            (shares_netns || declared).then_some((id, name, labels))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// One exited container as cleanup sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Exited {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub finished_at_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// Docker's history or the bus shows a person's `docker stop` since its last start.
    pub stopped_by_a_person: bool,
}

/// What a cleanup removes and what it leaves, with why.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub remove: Vec<Exited>,
    /// `name: why`.
    pub keep: Vec<String>,
}

/// Decides, from plain facts, which exited containers a cleanup may remove: only a container
/// that failed (OOM-killed, or an exit code a stop never produces), that no person stopped,
/// that is in scope and unprotected, and that exited at least `min_age` ago. Exit codes 0, 137
/// and 143 are what `docker stop` leaves (a clean exit, SIGKILL after the timeout, SIGTERM), so
/// a container with one of them is kept: it may be a person's, and its writable layer is
/// theirs.
pub fn plan_cleanup(
    candidates: Vec<Exited>,
    scope: &Scope,
    min_age: Duration,
    now_ms: u64,
) -> Plan {
    let mut plan = Plan::default();
    for c in candidates {
        let why = if !scope.contains(&c.labels) {
            Some("not in scope".to_owned())
        } else if scope::is_protected(&c.labels) {
            Some("protected".to_owned())
        } else if c.stopped_by_a_person {
            Some("stopped by a person".to_owned())
        } else if c
            .finished_at_ms
            .is_none_or(|t| now_ms.saturating_sub(t) < min_age.as_millis() as u64)
        {
            Some(format!("exited less than {} ago", humantime(min_age)))
        } else if !c.oom_killed && matches!(c.exit_code, None | Some(0 | 137 | 143)) {
            Some(format!(
                "exit code {} may be a person's stop",
                c.exit_code.map_or("unknown".into(), |e| e.to_string())
            ))
        } else {
            None
        };
        match why {
            Some(why) => plan.keep.push(format!("{}: {why}", c.name)),
            None => plan.remove.push(c),
        }
    }
    plan
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// Exited and dead containers, with the facts [`plan_cleanup`] needs (one inspect each, and
/// Docker's history for a person's stop).
pub async fn exited_containers(docker: &Docker) -> Result<Vec<Exited>, bollard::errors::Error> {
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
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let Some(id) = c.id.clone() else { continue };
        let Ok(i) = inspect(docker, &id).await else {
            continue;
        };
        let st = i.state.clone().unwrap_or_default();
        out.push(Exited {
            name: name(&i),
            labels: labels(&i),
            finished_at_ms: time_ms(st.finished_at.as_deref()),
            exit_code: st.exit_code,
            oom_killed: st.oom_killed.unwrap_or(false),
            stopped_by_a_person: stopped_by_a_person(docker, &i).await,
            id,
        });
    }
    Ok(out)
}

/// Removes the planned containers (their anonymous volumes only if `volumes`), then images
/// that have been dangling for over an hour. Returns the names removed, those Docker refused,
/// and the images and bytes reclaimed.
pub async fn remove_planned(
    docker: &Docker,
    plan: &Plan,
    volumes: bool,
) -> Result<(Vec<String>, Vec<String>, usize, u64), bollard::errors::Error> {
    let mut removed = Vec::new();
    let mut refused = Vec::new();
    for c in &plan.remove {
        let opts = RemoveContainerOptionsBuilder::new()
            .v(volumes)
            .force(false)
            .build();
        match docker.remove_container(&c.id, Some(opts)).await {
            Ok(()) => removed.push(c.name.clone()),
            Err(e) => {
                tracing::warn!(container = %c.name, error = %e, "cleanup could not remove");
                refused.push(format!("{}: {e}", c.name));
            }
        }
    }
    // Only images dangling for an hour: a build in progress holds fresh dangling intermediate
    // images, and pruning them breaks it ("No such image").
    let mut dangling = HashMap::new();
    dangling.insert("dangling", vec!["true"]);
    dangling.insert("until", vec!["1h"]);
    let pruned = docker
        .prune_images(Some(
            PruneImagesOptionsBuilder::new().filters(&dangling).build(),
        ))
        .await?;
    Ok((
        removed,
        refused,
        pruned.images_deleted.map(|d| d.len()).unwrap_or(0),
        pruned.space_reclaimed.unwrap_or(0).max(0) as u64,
    ))
}

/// Parses one of Docker's RFC 3339 times into ms since the epoch; Docker's zero time
/// (`0001-01-01T00:00:00Z`, "never") is `None`.
pub fn time_ms(raw: Option<&str>) -> Option<u64> {
    let t: DateTime<Utc> = raw?.parse().ok()?;
    let ms = t.timestamp_millis();
    (ms > 0).then_some(ms as u64)
}

/// The guards' view of an inspected container.
pub fn container_facts(i: &ContainerInspectResponse) -> Container {
    let st = i.state.clone().unwrap_or_default();
    let policy = i
        .host_config
        .as_ref()
        .and_then(|h| h.restart_policy.as_ref())
        .and_then(|p| p.name)
        .map(|n| n.to_string())
        .filter(|n| matches!(n.as_str(), "always" | "unless-stopped" | "on-failure"));
    let cpu_limit_cores = i.host_config.as_ref().and_then(|hc| {
        if let Some(n) = hc.nano_cpus.filter(|n| *n > 0) {
            return Some(n as f64 / 1e9);
        }
        match (hc.cpu_quota, hc.cpu_period) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
            _ => None,
        }
    });
    Container {
        id: i.id.clone().unwrap_or_default(),
        name: name(i),
        labels: labels(i),
        status: status(i),
        health: st
            .health
            .as_ref()
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| s != "none" && !s.is_empty()),
        started_at_ms: time_ms(st.started_at.as_deref()),
        finished_at_ms: time_ms(st.finished_at.as_deref()),
        exit_code: st.exit_code,
        oom_killed: st.oom_killed.unwrap_or(false),
        restart_policy: policy,
        restart_count: i.restart_count.unwrap_or(0),
        cpu_limit_cores,
    }
}

/// The actions Docker recorded for a container since `since_ms` (`kill`, `die`, `stop`,
/// `start`, `restart`...), oldest first. Bounded: at most 5 s and 1,000 events.
pub async fn events_since(docker: &Docker, id: &str, since_ms: u64) -> Vec<String> {
    let mut filters = HashMap::new();
    filters.insert("container", vec![id]);
    let since = format!("{}.{:09}", since_ms / 1000, (since_ms % 1000) * 1_000_000);
    let now = Utc::now();
    let opts = EventsOptionsBuilder::new()
        .since(&since)
        .until(&format!(
            "{}.{:09}",
            now.timestamp(),
            now.timestamp_subsec_nanos()
        ))
        .filters(&filters)
        .build();
    tokio::time::timeout(
        Duration::from_secs(5),
        docker.events(Some(opts)).take(1000).collect::<Vec<_>>(),
    )
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(Result::ok)
    .filter_map(|e| e.action)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(name: &str, exit: i64, age_s: u64) -> Exited {
        Exited {
            id: name.into(),
            name: name.into(),
            labels: HashMap::from([(scope::LABEL_ENABLE.to_owned(), "true".to_owned())]),
            finished_at_ms: Some(1_000_000_000 - age_s * 1000),
            exit_code: Some(exit),
            oom_killed: false,
            stopped_by_a_person: false,
        }
    }

    #[test]
    fn cleanup_removes_only_old_failures_nobody_stopped() {
        let day = 24 * 3600;
        let mut person = exited("person", 1, 2 * day);
        person.stopped_by_a_person = true;
        let mut oom = exited("oom", 137, 2 * day);
        oom.oom_killed = true;
        let mut stray = exited("stray", 1, 2 * day);
        stray.labels.clear();
        let mut prot = exited("prot", 1, 2 * day);
        prot.labels
            .insert(scope::LABEL_PROTECT.into(), "true".into());
        let candidates = vec![
            exited("crashed", 1, 2 * day),
            exited("fresh", 1, 60),
            exited("clean", 0, 2 * day),
            exited("killed", 137, 2 * day),
            exited("term", 143, 2 * day),
            person,
            oom,
            stray,
            prot,
        ];
        let plan = plan_cleanup(
            candidates,
            &Scope::default(),
            Duration::from_secs(day),
            1_000_000_000,
        );
        let removed: Vec<&str> = plan.remove.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(removed, ["crashed", "oom"]);
        let kept = plan.keep.join("; ");
        for (name, why) in [
            ("fresh", "exited less than 24 h ago"),
            ("clean", "exit code 0 may be a person's stop"),
            ("killed", "exit code 137"),
            ("term", "exit code 143"),
            ("person", "stopped by a person"),
            ("stray", "not in scope"),
            ("prot", "protected"),
        ] {
            assert!(kept.contains(&format!("{name}: {why}")), "{name}: {kept}");
        }
    }

    #[test]
    fn docker_times_parse_and_zero_is_never() {
        assert_eq!(time_ms(Some("1970-01-01T00:00:01.5Z")), Some(1500));
        assert_eq!(time_ms(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(time_ms(Some("soon")), None);
        assert_eq!(time_ms(None), None);
    }

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
