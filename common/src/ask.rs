//! Asking a host: a request/reply protocol over Redis to a host's monitor, the only reader of
//! that host's Docker engine.
//!
//! A request is added to the host's stream [`ask_stream`] (`hemostat:ask:<host>`, bounded with
//! `MAXLEN ~ 1000`); the host's monitor reads it with the consumer group [`ASK_GROUP`], answers
//! it from Docker and writes the reply to the list [`reply_key`] (`hemostat:reply:<id>`) with
//! `RPUSH` and `PEXPIRE` in one transaction that also acknowledges the request. The asker waits
//! for the reply with `BLPOP` on a connection of its own.
//!
//! Everything is bounded: the tail of a log (1..=1000 lines), the bytes of a log reply
//! (64 KiB, newest lines kept), the deadline (at most 30 s). All text read from a container is
//! scrubbed by the monitor before it is written, so secrets never leave the host.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::bus::Bus;
use crate::events::ContainerState;

/// Prefix of a host's request stream; see [`ask_stream`].
pub const ASK_STREAM_PREFIX: &str = "hemostat:ask:";
/// Prefix of a reply list; see [`reply_key`].
pub const REPLY_KEY_PREFIX: &str = "hemostat:reply:";
/// The consumer group a host's monitor reads its request stream with.
pub const ASK_GROUP: &str = "monitor";
/// The field of a stream entry that holds the request's JSON.
pub const REQUEST_FIELD: &str = "request";
/// The most requests a host's stream keeps (`XADD ... MAXLEN ~`).
pub const ASK_STREAM_MAXLEN: u64 = 1000;
/// The most log lines one request may ask for.
pub const TAIL_MAX: u32 = 1000;
/// The tail when a request names none.
pub const TAIL_DEFAULT: u32 = 100;
/// The most bytes of log lines in one reply; the newest lines are kept.
pub const LOG_REPLY_BYTES: usize = 64 * 1024;
/// The longest deadline a request may have.
pub const DEADLINE_MAX: Duration = Duration::from_secs(30);
/// The deadline when the asker names none.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(5);
/// How long a reply outlives its request's deadline, so an asker whose `BLPOP` started just
/// before the deadline still finds it, and an unread reply does not stay in Redis.
pub const REPLY_GRACE: Duration = Duration::from_secs(5);
/// The most requests a monitor answers at once.
pub const CONCURRENCY: usize = 8;

/// The request stream of `host`: `hemostat:ask:<host>`.
pub fn ask_stream(host: &str) -> String {
    format!("{ASK_STREAM_PREFIX}{host}")
}

/// The reply list of request `id`: `hemostat:reply:<id>`.
pub fn reply_key(request_id: &str) -> String {
    format!("{REPLY_KEY_PREFIX}{request_id}")
}

/// What may be asked of a host. Closed: nothing else can be asked, and no field names a
/// command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    /// Every container on the host, running or not.
    Containers,
    /// A summary of one container's inspect.
    Inspect {
        /// A container name or id on that host.
        container: String,
    },
    /// The newest lines of one container's log (stdout and stderr).
    Logs {
        /// A container name or id on that host.
        container: String,
        /// How many lines, 1..=[`TAIL_MAX`]; [`TAIL_DEFAULT`] when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<u32>,
        /// Only lines written at or after this time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<DateTime<Utc>>,
    },
}

impl Query {
    /// The tail this query asks for, within its bounds.
    pub fn tail(&self) -> u32 {
        match self {
            Query::Logs { tail, .. } => clamp_tail(*tail),
            _ => 0,
        }
    }
}

/// A tail within 1..=[`TAIL_MAX`], [`TAIL_DEFAULT`] when none was asked for.
pub fn clamp_tail(tail: Option<u32>) -> u32 {
    tail.unwrap_or(TAIL_DEFAULT).clamp(1, TAIL_MAX)
}

/// A timeout within its bounds: at most [`DEADLINE_MAX`], at least 100 ms.
pub fn clamp_timeout(timeout: Duration) -> Duration {
    timeout.clamp(Duration::from_millis(100), DEADLINE_MAX)
}

/// One request, as the JSON in its stream entry's `request` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AskRequest {
    /// A ULID; the reply is written to `hemostat:reply:<id>`.
    pub id: String,
    /// The host asked; a monitor answers only requests for its own host.
    pub host: String,
    /// Who asked (`cli`, `dashboard`), for the monitor's log.
    pub asked_by: String,
    pub query: Query,
    /// After this the asker has given up: the request is answered `expired`.
    pub deadline: DateTime<Utc>,
}

impl AskRequest {
    /// Checks what the monitor relies on: a ULID id (it becomes a key name), a container
    /// name of sane length, a deadline no further away than [`DEADLINE_MAX`] plus a second of
    /// clock skew.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), String> {
        if ulid::Ulid::from_string(&self.id).is_err() {
            return Err(format!("request id {:?} is not a ulid", self.id));
        }
        if let Query::Inspect { container } | Query::Logs { container, .. } = &self.query
            && (container.is_empty()
                || container.len() > 256
                || container.chars().any(|c| c.is_control() || c == '/'))
        {
            return Err(format!("container {container:?} is not a name or id"));
        }
        let longest = chrono::Duration::from_std(DEADLINE_MAX + Duration::from_secs(1))
            .unwrap_or(chrono::Duration::seconds(31));
        if self.deadline > now + longest {
            return Err(format!(
                "deadline {} is more than {} s away",
                self.deadline.to_rfc3339(),
                DEADLINE_MAX.as_secs()
            ));
        }
        Ok(())
    }
}

/// One container in a [`Answer::Containers`] list. Every string is scrubbed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerListing {
    pub id: String,
    pub name: String,
    pub image: String,
    /// `running`, `exited`...
    pub state: String,
    /// Docker's status text: `Up 3 minutes (healthy)`.
    pub status: String,
    /// `healthy`, `unhealthy` or `starting` when the container has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
}

/// A summary of one container's inspect. Every string is scrubbed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    /// The compose and hemostat labels (`com.docker.compose.*`, `hemostat.*`).
    pub labels: BTreeMap<String, String>,
}

/// Why a request could not be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No container of that name or id on the host.
    NotFound,
    /// The request broke a rule (see [`AskRequest::validate`]).
    Invalid,
    /// Docker failed or did not answer in time.
    Docker,
    /// The request's deadline had passed when the monitor read it.
    Expired,
}

/// What a host answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Answer {
    Containers {
        containers: Vec<ContainerListing>,
    },
    Inspect(Box<InspectSummary>),
    Logs {
        /// Oldest first, scrubbed.
        lines: Vec<String>,
        /// Older lines left out to keep the reply within [`LOG_REPLY_BYTES`].
        dropped: usize,
        /// The reply holds less than was asked for (lines dropped, or Docker's log stream
        /// was cut by the deadline).
        truncated: bool,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// One reply, the JSON in `hemostat:reply:<request id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AskReply {
    pub request_id: String,
    pub host: String,
    pub answered_at: DateTime<Utc>,
    pub result: Answer,
}

/// Why [`ask`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("host {host} did not answer within {secs} s (is its monitor running?)")]
    Timeout { host: String, secs: f64 },
    #[error("redis failed while asking host {host}: {source}")]
    Redis {
        host: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("the reply of host {host} is not valid: {source}")]
    Decode {
        host: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Asks `host` one question and waits up to `timeout` (bounded by [`DEADLINE_MAX`]) for its
/// monitor's reply.
///
/// The request goes out on the shared connection; the reply is awaited with `BLPOP` on a
/// connection opened for this call, since a blocking command on the shared multiplexed
/// connection would hold up every other command of the process.
pub async fn ask(
    bus: &Bus,
    host: &str,
    query: Query,
    timeout: Duration,
    asked_by: &str,
) -> Result<AskReply, AskError> {
    let timeout = clamp_timeout(timeout);
    let redis_err = |source| AskError::Redis {
        host: host.to_owned(),
        source,
    };
    let id = ulid::Ulid::new().to_string();
    let deadline = Utc::now() + chrono::Duration::from_std(timeout).unwrap_or_default();
    let request = AskRequest {
        id: id.clone(),
        host: host.to_owned(),
        asked_by: asked_by.to_owned(),
        query,
        deadline,
    };
    let json = serde_json::to_string(&request).map_err(|source| AskError::Decode {
        host: host.to_owned(),
        source,
    })?;
    // The waiting connection's own response timeout must outlast the BLPOP.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(timeout + Duration::from_secs(2)));
    let mut waiter = bus
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(redis_err)?;
    let mut conn = bus.connection();
    let _: String = redis::cmd("XADD")
        .arg(ask_stream(host))
        .arg("MAXLEN")
        .arg("~")
        .arg(ASK_STREAM_MAXLEN)
        .arg("*")
        .arg(REQUEST_FIELD)
        .arg(&json)
        .query_async(&mut conn)
        .await
        .map_err(redis_err)?;
    let popped: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(reply_key(&id))
        .arg(timeout.as_secs_f64())
        .query_async(&mut waiter)
        .await
        .map_err(redis_err)?;
    let Some((_, body)) = popped else {
        return Err(AskError::Timeout {
            host: host.to_owned(),
            secs: (timeout.as_secs_f64() * 10.0).round() / 10.0,
        });
    };
    serde_json::from_str(&body).map_err(|source| AskError::Decode {
        host: host.to_owned(),
        source,
    })
}

/// A `since` as a user writes it: a duration back from `now` (`30s`, `10m`, `2h`, `1d`) or an
/// RFC 3339 time.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let back = crate::config::parse_duration(s)?;
    let back = chrono::Duration::from_std(back).map_err(|e| format!("since {s:?}: {e}"))?;
    Ok(now - back)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tail_and_timeout_are_bounded() {
        assert_eq!(clamp_tail(None), TAIL_DEFAULT);
        assert_eq!(clamp_tail(Some(0)), 1);
        assert_eq!(clamp_tail(Some(5)), 5);
        assert_eq!(clamp_tail(Some(1_000_000)), TAIL_MAX);
        assert_eq!(clamp_timeout(Duration::from_secs(600)), DEADLINE_MAX);
        assert_eq!(clamp_timeout(Duration::ZERO), Duration::from_millis(100));
        assert_eq!(
            clamp_timeout(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }

    fn request(query: Query, in_secs: i64) -> AskRequest {
        AskRequest {
            id: ulid::Ulid::new().to_string(),
            host: "h1".into(),
            asked_by: "test".into(),
            query,
            deadline: Utc::now() + chrono::Duration::seconds(in_secs),
        }
    }

    #[test]
    fn requests_that_break_a_bound_are_invalid() {
        let now = Utc::now();
        assert!(request(Query::Containers, 5).validate(now).is_ok());
        assert!(request(Query::Containers, 120).validate(now).is_err());
        let mut r = request(Query::Containers, 5);
        r.id = "../../etc".into();
        assert!(r.validate(now).is_err());
        for bad in ["", "a/b", "x\ny", &"a".repeat(300)] {
            let q = Query::Inspect {
                container: bad.to_owned(),
            };
            assert!(request(q, 5).validate(now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wire_shapes_are_tagged() {
        let q = Query::Logs {
            container: "web".into(),
            tail: Some(5),
            since: None,
        };
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"type":"logs","container":"web","tail":5}"#
        );
        let q: Query = serde_json::from_str(r#"{"type":"containers"}"#).unwrap();
        assert_eq!(q, Query::Containers);
        assert!(serde_json::from_str::<Query>(r#"{"type":"exec","cmd":"sh"}"#).is_err());
        let a = Answer::Error {
            kind: ErrorKind::NotFound,
            message: "no container x".into(),
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"type":"error","kind":"not_found","message":"no container x"}"#
        );
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = Utc::now();
        assert_eq!(
            parse_since("10m", now).unwrap(),
            now - chrono::Duration::minutes(10)
        );
        assert!(parse_since("2026-12-01T00:00:00Z", now).is_ok());
        assert!(parse_since("yesterday", now).is_err());
    }
}
