//! Asking a host from the dashboard: `GET /api/hosts/{host}/containers`,
//! `/api/hosts/{host}/containers/{container}` (an inspect) and
//! `/api/hosts/{host}/containers/{container}/logs?tail=&since=`. Each is one request to the
//! host's monitor (`hemostat_common::ask`); the reply JSON comes back as it is, a host that
//! does not answer in time is 504 with the reason. They sit behind the same read guard as every
//! other `/api/` read.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::api::AppState;
use hemostat_common::ask::{self, AskError};

/// How long the dashboard waits for a host.
const TIMEOUT: Duration = ask::DEADLINE_DEFAULT;

/// `?tail=&since=` of a logs request.
#[derive(Debug, Deserialize)]
pub struct LogsParams {
    pub tail: Option<u32>,
    /// A duration back (`10m`) or an RFC 3339 time.
    pub since: Option<String>,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn run(s: &AppState, host: &str, query: ask::Query) -> Response {
    if host.is_empty() || host.len() > 256 || host.chars().any(char::is_control) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("host {host:?} is not a host id"),
        );
    }
    match ask::ask(&s.bus, host, query, TIMEOUT, "dashboard").await {
        Ok(reply) => {
            let status = match &reply.result {
                ask::Answer::Error {
                    kind: ask::ErrorKind::NotFound,
                    ..
                } => StatusCode::NOT_FOUND,
                ask::Answer::Error {
                    kind: ask::ErrorKind::Invalid,
                    ..
                } => StatusCode::BAD_REQUEST,
                ask::Answer::Error { .. } => StatusCode::BAD_GATEWAY,
                _ => StatusCode::OK,
            };
            (status, Json(reply)).into_response()
        }
        Err(e @ AskError::Timeout { .. }) => error(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, host, "asking a host failed");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

pub async fn containers(State(s): State<AppState>, Path(host): Path<String>) -> Response {
    run(&s, &host, ask::Query::Containers).await
}

pub async fn inspect(
    State(s): State<AppState>,
    Path((host, container)): Path<(String, String)>,
) -> Response {
    run(&s, &host, ask::Query::Inspect { container }).await
}

pub async fn logs(
    State(s): State<AppState>,
    Path((host, container)): Path<(String, String)>,
    params: Result<Query<LogsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let since = match params
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|v| ask::parse_since(v, chrono::Utc::now()))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("since: {e}")),
    };
    let query = ask::Query::Logs {
        container,
        tail: Some(ask::clamp_tail(params.tail)),
        since,
    };
    run(&s, &host, query).await
}
