//! Answers what is asked of this host (`hemostat:ask:<host>`, see `hemostat_common::ask`):
//! lists, inspects and log tails, read from Docker, scrubbed, bounded and written to the
//! asker's reply list.
//!
//! The request stream is read with the consumer group `monitor` and the fixed consumer name
//! `monitor` (one monitor per host), so a monitor restarted while a request is pending finds
//! it in its own pending list and answers it. A request whose deadline has passed when it is
//! read is answered `expired` (a reply nobody may read, kept only [`REPLY_GRACE`]) and acked:
//! answering it costs one write and tells a late asker why, where dropping it would leave it
//! waiting for nothing. A request is acked in the same transaction that writes its reply.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
};
use chrono::Utc;
use futures::StreamExt;
use hemostat_common::ask::{
    ASK_GROUP, Answer, AskReply, AskRequest, CONCURRENCY, ContainerListing, ErrorKind,
    InspectSummary, LOG_REPLY_BYTES, Query, REPLY_GRACE, REQUEST_FIELD, ask_stream, reply_key,
};
use hemostat_common::bus::{Backoff, Bus};
use hemostat_common::docker::container_state;
use hemostat_common::scrub;
use hemostat_common::shutdown::Shutdown;
use redis::streams::{StreamId, StreamReadReply};
use tokio::sync::Semaphore;

/// The consumer name of this host's monitor in [`ASK_GROUP`].
const CONSUMER: &str = "monitor";
/// How long one `XREADGROUP` blocks, so shutdown is noticed between reads.
const BLOCK: Duration = Duration::from_secs(2);
/// The largest request entry read; a larger one is dead-lettered unread.
const REQUEST_LIMIT: usize = 16 * 1024;

/// Reads this host's request stream until shutdown, answering up to [`CONCURRENCY`] requests
/// at once.
pub async fn answer_forever(docker: Docker, bus: Bus, host: String, shutdown: Shutdown) {
    let stream = ask_stream(&host);
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // The pending list of this consumer is read once per connection, from the start, before
    // new entries: what a previous run left unanswered comes first.
    loop {
        let ended = read_loop(&docker, &bus, &host, &stream, &slots, &shutdown).await;
        match ended {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, stream, retry_in = ?delay, "reading ask requests failed");
                tokio::select! {
                    // Shutdown ends the loop; a task returning after it is the normal end.
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn read_loop(
    docker: &Docker,
    bus: &Bus,
    host: &str,
    stream: &str,
    slots: &Arc<Semaphore>,
    shutdown: &Shutdown,
) -> redis::RedisResult<()> {
    // A blocking read needs a connection of its own: on the shared one it would hold up every
    // other command of the monitor for the whole block.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(3)));
    let mut conn = bus
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    ensure_group(&mut conn, stream).await?;
    // `Some(id)`: reading this consumer's pending list after `id`; `None`: new entries.
    let mut pending_after: Option<String> = Some("0".to_owned());
    loop {
        let first = tokio::select! {
            // Shutdown stops reading; requests in hand finish on their own tasks.
            () = shutdown.cancelled() => return Ok(()),
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
        };
        let count = 1 + slots.available_permits();
        let from = pending_after.clone().unwrap_or_else(|| ">".to_owned());
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(ASK_GROUP)
            .arg(CONSUMER)
            .arg("COUNT")
            .arg(count);
        if pending_after.is_none() {
            cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(stream).arg(&from);
        let read: redis::RedisResult<Option<StreamReadReply>> = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = cmd.query_async(&mut conn) => r,
        };
        let read = match read {
            Ok(r) => r,
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis lost the group (restarted without persistence): make it again.
                ensure_group(&mut conn, stream).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let entries: Vec<StreamId> = read
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        if entries.is_empty() {
            // The pending list is done: from now on, new entries.
            pending_after = None;
            drop(first);
            continue;
        }
        if pending_after.is_some() {
            pending_after = entries.last().map(|e| e.id.clone());
        }
        let mut first = Some(first);
        for entry in entries {
            let permit = match first.take() {
                Some(p) => p,
                // Only this loop takes slots, and it read no more entries than were free.
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return Ok(()),
                },
            };
            let (docker, bus, host, stream) = (
                docker.clone(),
                bus.clone(),
                host.to_owned(),
                stream.to_owned(),
            );
            tokio::spawn(async move {
                handle(&docker, &bus, &host, &stream, entry).await;
                drop(permit);
            });
        }
    }
}

async fn ensure_group(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> redis::RedisResult<()> {
    // From the start of the stream: a request added before the group existed (the first
    // monitor start) is still answered, or answered expired. The stream is bounded, so this
    // is at most ~1,000 entries once.
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(ASK_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// Answers one entry, or dead-letters it when it is not a request this host can answer.
async fn handle(docker: &Docker, bus: &Bus, host: &str, stream: &str, entry: StreamId) {
    let payload: Option<String> = entry
        .map
        .get(REQUEST_FIELD)
        .and_then(|v| redis::from_redis_value_ref(v).ok());
    let Some(payload) = payload else {
        reject(
            bus,
            host,
            stream,
            &entry.id,
            "entry has no request field",
            "",
            None,
        )
        .await;
        return;
    };
    if payload.len() > REQUEST_LIMIT {
        let reason = format!("request is {} bytes, over {REQUEST_LIMIT}", payload.len());
        reject(bus, host, stream, &entry.id, &reason, "", None).await;
        return;
    }
    let request: AskRequest = match serde_json::from_str(&payload) {
        Ok(r) => r,
        Err(e) => {
            // An asker that sent a broken request may still be waiting: tell it, when its id
            // can be read.
            let id = serde_json::from_str::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                .filter(|id| ulid::Ulid::from_string(id).is_ok());
            let reason = format!("request is not valid: {e}");
            reject(bus, host, stream, &entry.id, &reason, &payload, id).await;
            return;
        }
    };
    let now = Utc::now();
    let problem = match request.validate(now) {
        Err(e) => Some(e),
        Ok(()) if request.host != host => Some(format!(
            "request for host {} reached host {host}",
            request.host
        )),
        Ok(()) => None,
    };
    if let Some(reason) = problem {
        reject(
            bus,
            host,
            stream,
            &entry.id,
            &reason,
            &payload,
            Some(request.id),
        )
        .await;
        return;
    }
    let result = if request.deadline <= now {
        Answer::Error {
            kind: ErrorKind::Expired,
            message: format!(
                "the request's deadline {} had passed when host {host} read it",
                request.deadline.to_rfc3339()
            ),
        }
    } else {
        let left = (request.deadline - now).to_std().unwrap_or_default();
        match tokio::time::timeout(left, answer(docker, &request.query)).await {
            Ok(a) => a,
            Err(_) => Answer::Error {
                kind: ErrorKind::Docker,
                message: format!("docker on host {host} did not answer before the deadline"),
            },
        }
    };
    tracing::debug!(request = %request.id, asked_by = %request.asked_by, "answered an ask request");
    let reply = AskReply {
        request_id: request.id.clone(),
        host: host.to_owned(),
        answered_at: Utc::now(),
        result,
    };
    let ttl = (request.deadline - Utc::now())
        .to_std()
        .unwrap_or_default()
        .saturating_add(REPLY_GRACE);
    write_reply(bus, stream, &entry.id, &reply, ttl, true).await;
}

/// Logs, counts and dead-letters an entry (which acks it), first telling the asker why when
/// its request id is known.
async fn reject(
    bus: &Bus,
    host: &str,
    stream: &str,
    entry_id: &str,
    reason: &str,
    payload: &str,
    request_id: Option<String>,
) {
    if let Some(id) = request_id {
        let reply = AskReply {
            request_id: id,
            host: host.to_owned(),
            answered_at: Utc::now(),
            result: Answer::Error {
                kind: ErrorKind::Invalid,
                message: reason.to_owned(),
            },
        };
        write_reply(bus, stream, entry_id, &reply, REPLY_GRACE, false).await;
    }
    if let Err(e) = bus
        .dead_letter(stream, Some(ASK_GROUP), Some(entry_id), reason, payload)
        .await
    {
        // The entry stays pending and is looked at again when the monitor next starts.
        tracing::warn!(error = %e, stream, entry_id, "cannot dead-letter an ask request");
    }
}

/// Writes `reply` (RPUSH and PEXPIRE, and the entry's XACK when `ack`) in one transaction,
/// retrying until the reply's time to live has passed.
async fn write_reply(
    bus: &Bus,
    stream: &str,
    entry_id: &str,
    reply: &AskReply,
    ttl: Duration,
    ack: bool,
) {
    let Ok(json) = serde_json::to_string(reply) else {
        return;
    };
    let key = reply_key(&reply.request_id);
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("RPUSH").arg(&key).arg(&json).ignore();
    pipe.cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl.as_millis().max(1) as u64)
        .ignore();
    if ack {
        pipe.cmd("XACK")
            .arg(stream)
            .arg(ASK_GROUP)
            .arg(entry_id)
            .ignore();
    }
    let give_up = tokio::time::Instant::now() + ttl;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        match bus.run(&pipe).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < give_up => {
                tracing::warn!(error = %e, key, "cannot write an ask reply; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                // Left pending: the next start of the monitor answers it expired.
                tracing::warn!(error = %e, key, "cannot write an ask reply; giving up");
                return;
            }
        }
    }
}

/// The answer to `query`, from Docker.
pub async fn answer(docker: &Docker, query: &Query) -> Answer {
    match query {
        Query::Containers => containers(docker).await,
        Query::Inspect { container } => match inspect(docker, container).await {
            Ok(s) => Answer::Inspect(Box::new(s)),
            Err(e) => e,
        },
        Query::Logs {
            container, since, ..
        } => logs(docker, container, query.tail(), *since).await,
    }
}

fn docker_error(container: &str, e: bollard::errors::Error) -> Answer {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => Answer::Error {
            kind: ErrorKind::NotFound,
            message: format!("no container {container:?} on this host"),
        },
        e => Answer::Error {
            kind: ErrorKind::Docker,
            message: scrub::scrub(&format!("docker failed for container {container:?}: {e}")),
        },
    }
}

/// Docker's health word in a list's status text: `Up 3 minutes (healthy)`.
fn health_of(status: &str) -> Option<String> {
    for (needle, word) in [
        ("(unhealthy)", "unhealthy"),
        ("(healthy)", "healthy"),
        ("(health: starting)", "starting"),
    ] {
        if status.contains(needle) {
            return Some(word.to_owned());
        }
    }
    None
}

async fn containers(docker: &Docker) -> Answer {
    let opts = ListContainersOptionsBuilder::new().all(true).build();
    let list = match docker.list_containers(Some(opts)).await {
        Ok(l) => l,
        Err(e) => {
            return Answer::Error {
                kind: ErrorKind::Docker,
                message: scrub::scrub(&format!("docker cannot list containers: {e}")),
            };
        }
    };
    let containers = list
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            let label = |k: &str| labels.get(k).map(|v| scrub::scrub_pair(k, v));
            let status = scrub::scrub(c.status.as_deref().unwrap_or_default());
            ContainerListing {
                id: c.id.unwrap_or_default(),
                name: scrub::scrub(
                    c.names
                        .as_ref()
                        .and_then(|n| n.first())
                        .map(|n| n.trim_start_matches('/'))
                        .unwrap_or_default(),
                ),
                image: scrub::scrub(c.image.as_deref().unwrap_or_default()),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                health: health_of(&status),
                status,
                compose_project: label("com.docker.compose.project"),
                compose_service: label("com.docker.compose.service"),
            }
        })
        .collect();
    Answer::Containers { containers }
}

/// The labels an inspect summary carries: compose's and hemostat's own.
fn relevant_labels(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels
        .into_iter()
        .filter(|(k, _)| k.starts_with("com.docker.compose.") || k.starts_with("hemostat."))
        .map(|(k, v)| {
            let v = scrub::scrub_pair(&k, &v);
            (k, v)
        })
        .collect()
}

async fn inspect(docker: &Docker, container: &str) -> Result<InspectSummary, Answer> {
    let i = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .map_err(|e| docker_error(container, e))?;
    let state = container_state(&i).ok_or_else(|| Answer::Error {
        kind: ErrorKind::Docker,
        message: format!("docker's inspect of container {container:?} has no state"),
    })?;
    let config = i.config.unwrap_or_default();
    Ok(InspectSummary {
        id: i.id.unwrap_or_default(),
        name: scrub::scrub(
            i.name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('/'),
        ),
        image: scrub::scrub(config.image.as_deref().unwrap_or_default()),
        state,
        labels: relevant_labels(config.labels.unwrap_or_default()),
    })
}

async fn logs(
    docker: &Docker,
    container: &str,
    tail: u32,
    since: Option<chrono::DateTime<Utc>>,
) -> Answer {
    // Inspect first: a missing container is `not_found`, and the logs are read by id.
    let id = match docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
    {
        Ok(i) => i.id.unwrap_or_else(|| container.to_owned()),
        Err(e) => return docker_error(container, e),
    };
    let mut opts = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&tail.to_string());
    if let Some(since) = since {
        opts = opts.since(i32::try_from(since.timestamp()).unwrap_or(0).max(0));
    }
    let mut read = std::pin::pin!(docker.logs(&id, Some(opts.build())));
    let mut text = String::new();
    let mut cut = false;
    while let Some(chunk) = read.next().await {
        match chunk {
            Ok(c) => text.push_str(&c.to_string()),
            Err(e) => return docker_error(container, e),
        }
        // Docker sends at most `tail` lines, but a line may be long: stop reading well past
        // what a reply can carry.
        if text.len() > LOG_REPLY_BYTES * 4 {
            cut = true;
            break;
        }
    }
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let start = lines.len().saturating_sub(tail as usize);
    // The tail is scrubbed as one text, so a key printed over many lines goes whole.
    let (lines, dropped) = scrub::scrub_and_trim(&lines[start..], LOG_REPLY_BYTES);
    Answer::Logs {
        lines,
        dropped,
        truncated: cut || dropped > 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn health_is_read_from_the_status_text() {
        assert_eq!(
            health_of("Up 3 minutes (healthy)").as_deref(),
            Some("healthy")
        );
        assert_eq!(
            health_of("Up 3 minutes (unhealthy)").as_deref(),
            Some("unhealthy")
        );
        assert_eq!(
            health_of("Up 1 second (health: starting)").as_deref(),
            Some("starting")
        );
        assert_eq!(health_of("Exited (1) 2 hours ago"), None);
    }

    #[test]
    fn only_compose_and_hemostat_labels_are_kept_and_secrets_redacted() {
        let labels = HashMap::from([
            ("com.docker.compose.service".to_owned(), "web".to_owned()),
            ("hemostat.enable".to_owned(), "true".to_owned()),
            ("hemostat.db.password".to_owned(), "hunter2".to_owned()),
            ("maintainer".to_owned(), "someone".to_owned()),
        ]);
        let kept = relevant_labels(labels);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept["hemostat.db.password"], scrub::REDACTED);
    }
}
