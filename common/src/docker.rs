//! Docker helpers every agent that talks to Docker shares: connecting (with API version
//! negotiation and backoff) and turning an inspect response into the wire's state, with the
//! text that comes from the container (health-check output, the state's error) scrubbed.

use std::time::Duration;

use anyhow::Context as _;
use bollard::Docker;
use bollard::models::ContainerInspectResponse;

use crate::bus::Backoff;
use crate::events::{ContainerState, HealthState};
use crate::http::Health;
use crate::scrub::scrub;
use crate::shutdown::Shutdown;

/// Longest health-check output carried in an alert.
pub const HEALTH_OUTPUT_LIMIT: usize = 1024;

/// A client for `docker_host` (`DOCKER_HOST`: `unix:///path` or `tcp://host:port`, the latter
/// how compose's agents reach Docker through their proxy), or for the local socket when unset.
/// Makes no connection yet.
pub fn client(docker_host: Option<&str>) -> Result<Docker, bollard::errors::Error> {
    match docker_host {
        Some(host) => Docker::connect_with_host(host),
        None => Docker::connect_with_local_defaults(),
    }
}

/// Connects to Docker (unix socket or `DOCKER_HOST`) and negotiates the API version, waiting
/// with backoff while Docker is unreachable.
pub async fn connect_docker(
    docker_host: Option<&str>,
    health: &Health,
    shutdown: &Shutdown,
) -> anyhow::Result<Docker> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let attempt = async {
            let docker = client(docker_host).context("docker client")?;
            docker
                .negotiate_version()
                .await
                .context("docker version negotiation")
        };
        match attempt.await {
            Ok(docker) => {
                health.ok("docker");
                tracing::info!(api = %docker.client_version(), "connected to docker");
                return Ok(docker);
            }
            Err(e) => {
                health.degraded("docker", format!("{e:#}"));
                let delay = backoff.next_delay();
                tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "docker not reachable");
                tokio::select! {
                    () = shutdown.cancelled() => anyhow::bail!("shut down while waiting for docker"),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Health-check output as it may be carried: scrubbed of secrets, then cut to
/// [`HEALTH_OUTPUT_LIMIT`] bytes on a character boundary. Scrubbing comes first, so a key
/// block is recognised whole before the cut.
pub fn trim_output(s: &str) -> String {
    let s = scrub(s.trim());
    if s.len() <= HEALTH_OUTPUT_LIMIT {
        return s;
    }
    let mut cut = HEALTH_OUTPUT_LIMIT;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// The alert-relevant part of an inspect response. This is where text a container wrote into
/// its inspect (the last health-check output, the state's error) enters hemostat, so both are
/// scrubbed here and nowhere else.
pub fn container_state(i: &ContainerInspectResponse) -> Option<ContainerState> {
    let st = i.state.as_ref()?;
    let health = st.health.as_ref().map(|h| {
        let last = h.log.as_ref().and_then(|l| l.last());
        HealthState {
            status: h.status.map(|s| s.to_string()).unwrap_or_default(),
            failing_streak: h.failing_streak.unwrap_or(0),
            last_output: last.and_then(|r| r.output.as_deref()).map(trim_output),
            last_exit_code: last.and_then(|r| r.exit_code),
        }
    });
    Some(ContainerState {
        status: st.status.map(|s| s.to_string()).unwrap_or_default(),
        running: st.running.unwrap_or(false),
        exit_code: st.exit_code,
        oom_killed: st.oom_killed.unwrap_or(false),
        restart_count: i.restart_count.unwrap_or(0),
        started_at: st.started_at.clone(),
        finished_at: st.finished_at.clone(),
        error: st.error.as_deref().filter(|e| !e.is_empty()).map(scrub),
        health,
        memory_limit_bytes: i
            .host_config
            .as_ref()
            .and_then(|h| h.memory)
            .filter(|m| *m > 0)
            .map(|m| m as u64),
    })
}

/// The newest `lines` lines of a container's stdout and stderr, scrubbed as one text and cut to
/// `budget` bytes (newest kept), read within `timeout`. Whatever arrived before the timeout or
/// an error is used; an unreadable log is an empty tail, never a failure: the alert matters
/// more than its context.
pub async fn log_tail(
    docker: &Docker,
    id: &str,
    lines: usize,
    budget: usize,
    timeout: Duration,
) -> crate::events::LogTail {
    use futures::StreamExt as _;
    if lines == 0 {
        return crate::events::LogTail::default();
    }
    let opts = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&lines.to_string())
        .build();
    let mut chunks = Vec::new();
    // Chunks are lines for a container without a TTY; bound them anyway, so a container that
    // writes without newlines cannot make this read unbounded.
    let mut read = docker.logs(id, Some(opts)).take(lines * 4);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, read.next()).await {
            Ok(Some(Ok(chunk))) => chunks.push(chunk.to_string()),
            Ok(Some(Err(e))) => {
                tracing::debug!(container = id, error = %e, "log read failed");
                break;
            }
            Ok(None) => break,
            Err(_) => {
                tracing::debug!(container = id, ?timeout, "log read timed out");
                break;
            }
        }
    }
    let all: Vec<String> = chunks
        .iter()
        .flat_map(|c| c.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let start = all.len().saturating_sub(lines);
    // The whole tail is scrubbed as one text, so a key printed over many lines, or one the
    // tail starts or ends inside, goes whole.
    let (lines, dropped) = crate::scrub::scrub_and_trim(&all[start..], budget);
    crate::events::LogTail { lines, dropped }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use bollard::models::{
        ContainerState as DockerState, Health as DockerHealth, HealthcheckResult,
    };

    #[test]
    fn long_health_output_is_trimmed_on_a_char_boundary() {
        let s = "é".repeat(2000);
        let t = trim_output(&s);
        assert!(t.len() <= HEALTH_OUTPUT_LIMIT + "…".len());
        assert_eq!(trim_output("  ok\n"), "ok");
    }

    #[test]
    fn health_output_and_state_error_are_scrubbed() {
        let probe = "check failed: GET http://app:8080/health?token=9f8e7d6c5b4a -> 500\n\
                     -----BEGIN PRIVATE KEY-----\n\
                     MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n\
                     -----END PRIVATE KEY-----";
        let inspect = ContainerInspectResponse {
            state: Some(DockerState {
                error: Some("connect postgres://app:hunter2@db:5432/app: refused".into()),
                health: Some(DockerHealth {
                    log: Some(vec![HealthcheckResult {
                        output: Some(probe.into()),
                        exit_code: Some(1),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let state = container_state(&inspect).unwrap();
        let output = state.health.and_then(|h| h.last_output).unwrap();
        assert_eq!(
            output,
            "check failed: GET http://app:8080/health?token=[REDACTED] -> 500\n[REDACTED PRIVATE KEY]"
        );
        assert_eq!(
            state.error.as_deref(),
            Some("connect postgres://app:[REDACTED]@db:5432/app: refused")
        );
    }

    #[test]
    fn docker_host_may_be_a_socket_or_a_tcp_proxy() {
        for host in [
            "unix:///var/run/docker.sock",
            "tcp://docker-read:2375",
            "tcp://127.0.0.1:2375",
            "http://docker-write:2375",
        ] {
            assert!(client(Some(host)).is_ok(), "{host}");
        }
        assert!(client(Some("ftp://docker:21")).is_err());
    }
}
