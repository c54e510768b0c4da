//! The HTTP surface: the page and its assets, the JSON API under `/api`, the live feed, the
//! actions, `/healthz` and `/metrics`.
//!
//! Reads fail soft: when Redis is away an API call answers 503 with `{"error": ...}` at once,
//! and the page keeps what it showed and says so. Actions need the bearer token; each one is
//! written to the audit stream with who did it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use hemostat_alert::engine::Silence;
use hemostat_common::bus::{Bus, BusError};
use hemostat_common::events::{AUDIT_STREAM, Channel, Envelope, Payload};
use hemostat_common::http::Health;
use hemostat_common::metrics::SharedRegistry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{self, Denied};
use crate::config::DashboardConfig;
use crate::live::Live;
use crate::model::{self, TimelineFilter};
use crate::store;

/// Who acted, when the request does not say (the token is shared, so it cannot tell).
const DEFAULT_ACTOR: &str = "dashboard";
/// Optional header naming the person acting, recorded in the audit stream.
pub const ACTOR_HEADER: &str = "x-hemostat-actor";

/// Label set of the actions counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
    pub result: String,
}

/// Everything a handler needs.
pub struct Inner {
    pub bus: Bus,
    pub cfg: DashboardConfig,
    pub live: Live,
    pub health: Health,
    pub registry: Arc<SharedRegistry>,
    pub actions: Family<ActionLabel, Counter>,
    pub stream_maxlen: u64,
}

/// Shared state of the router.
pub type AppState = Arc<Inner>;

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/config", get(config))
        .route("/api/overview", get(overview))
        .route("/api/containers", get(containers))
        .route("/api/timeline", get(timeline))
        .route("/api/remediations", get(remediations))
        .route("/api/alerts", get(alerts))
        .route("/api/agents", get(agents))
        .route("/api/events", get(events))
        .route(
            "/api/hosts/{host}/containers",
            get(crate::hosts::containers),
        )
        .route(
            "/api/hosts/{host}/containers/{container}",
            get(crate::hosts::inspect),
        )
        .route(
            "/api/hosts/{host}/containers/{container}/logs",
            get(crate::hosts::logs),
        )
        .route("/api/breakers/reset", post(reset_breaker))
        .route("/api/silences", post(add_silence))
        .route("/api/silences/{id}", delete(expire_silence))
        .route("/api/proposals", get(crate::actions::list_proposals))
        .route(
            "/api/proposals/{host}/{id}/{verdict}",
            post(crate::actions::decide_api),
        )
        .route(
            "/approve/{host}/{id}",
            get(crate::actions::approve_page).post(crate::actions::approve_post),
        )
        .route("/api/restart", post(crate::actions::restart_now))
        .route(
            "/api/maintenance",
            get(crate::actions::list_windows).post(crate::actions::add_window),
        )
        .route("/api/maintenance/{id}", delete(crate::actions::end_window))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            gatekeeper,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Every failure answers JSON `{"error": "..."}` with a fitting status.
#[derive(Debug)]
pub enum ApiError {
    Redis(String),
    Denied(Denied),
    BadRequest(String),
    NotFound(String),
    /// The request came too late or too early for what it asks (a decided proposal).
    Conflict(String),
    /// The `Host` header names a host the dashboard does not answer to.
    UnknownHost,
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> ApiError {
        tracing::warn!(error = %e, "redis read failed");
        ApiError::Redis(format!("redis unreachable: {e}"))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        tracing::warn!(error = format!("{e:#}"), "redis call failed");
        ApiError::Redis(format!("redis unreachable: {e:#}"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError::BadRequest(e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::BadRequest(e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::Redis(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Denied(d @ Denied::ReadOnly) => (StatusCode::FORBIDDEN, d.message().into()),
            ApiError::Denied(d @ (Denied::BadToken | Denied::NoReadToken)) => {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({ "error": d.message() })),
                )
                    .into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"hemostat-dashboard\""),
                );
                return r;
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::UnknownHost => (
                StatusCode::FORBIDDEN,
                "this dashboard does not answer to that host name; add it to \
                 HEMOSTAT_DASHBOARD_HOSTS to allow it"
                    .into(),
            ),
        };
        (status, Json(json!({ "error": msg }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

// ---------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------

/// The page, its script and its style are compiled in: nothing to build, nothing fetched from
/// elsewhere, works offline.
const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

async fn index() -> impl IntoResponse {
    Html(INDEX_HTML)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such page".into())
}

/// Headers on every answer: a strict content security policy (the page loads only its own
/// script and style, so injected markup could not run), no framing, no sniffing, and no
/// caching of live data.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    // A page that sets its own policy (the approval page, which posts a form) keeps it.
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Before any handler: the `Host` must be one the dashboard answers to (every path), and with
/// a read token configured, the JSON API, the live feed and `/metrics` need it (or the action
/// token). The page and its assets load without a token, so it can ask for one; `/healthz`
/// says only whether the dashboard is well. Refusals are counted, never logged with a token.
async fn gatekeeper(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if !auth::host_allowed(&s.cfg.hosts, host) {
        count(&s, "request", "unknown_host");
        return ApiError::UnknownHost.into_response();
    }
    let path = req.uri().path();
    let guarded = path.starts_with("/api/") || path == "/metrics";
    if guarded && s.cfg.read_token.is_some() {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let query = Query::<BTreeMap<String, String>>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.get("access_token").cloned());
        if let Err(d) = auth::authorize_read(
            s.cfg.read_token.as_ref(),
            s.cfg.token.as_ref(),
            header,
            query.as_deref(),
        ) {
            count(&s, "read", "unauthorized");
            return ApiError::Denied(d).into_response();
        }
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Health and metrics (the same answers as every agent's own listener)
// ---------------------------------------------------------------------------------------------

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let reasons = s.health.reasons();
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "agent": crate::AGENT,
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "degraded": reasons,
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status, Json(body))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.registry.encode(),
    )
}

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

async fn config(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "read_only": s.cfg.token.is_none(),
        "version": env!("CARGO_PKG_VERSION"),
        "history": s.cfg.history,
        "sparkline_points": s.cfg.sparkline_points,
        "redis": if s.live.redis_up() { "up" } else { "down" },
    }))
}

async fn agent_rows(s: &Inner, now: DateTime<Utc>) -> Result<Vec<model::AgentRow>, ApiError> {
    let (live, history) = tokio::try_join!(
        store::live_heartbeats(&s.bus),
        s.bus.recent(Channel::Heartbeat, s.cfg.history),
    )?;
    Ok(model::agents(&live, &history, now))
}

async fn container_rows(
    s: &Inner,
    h: &model::History,
    now: DateTime<Utc>,
) -> Result<Vec<model::ContainerRow>, ApiError> {
    let mut rows = model::containers(h, s.cfg.sparkline_points, now);
    store::fill_breakers(&s.bus, &mut rows).await?;
    Ok(rows)
}

async fn overview(State(s): State<AppState>) -> ApiResult<Value> {
    let now = Utc::now();
    let h = store::history(&s.bus, s.cfg.history).await?;
    let rows = container_rows(&s, &h, now).await?;
    let agents = agent_rows(&s, now).await?;
    let o = model::overview(&h, &rows, &agents, now);
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    v["breakers_open"] = json!(rows.iter().filter(|r| r.breaker.open).count());
    Ok(Json(v))
}

async fn containers(State(s): State<AppState>) -> ApiResult<Value> {
    let now = Utc::now();
    let h = store::history(&s.bus, s.cfg.history).await?;
    let rows = container_rows(&s, &h, now).await?;
    Ok(Json(json!({ "containers": rows, "generated_at": now })))
}

async fn timeline(
    State(s): State<AppState>,
    filter: Result<Query<TimelineFilter>, QueryRejection>,
) -> ApiResult<Value> {
    let Query(filter) = filter?;
    // Metrics and heartbeats are most of the traffic: read their streams only when they can
    // be shown.
    let channels: Vec<Channel> = Channel::ALL
        .into_iter()
        .filter(|c| !matches!(c, Channel::Metrics | Channel::Heartbeat) || filter.wants_noise())
        .collect();
    let lists = store::channels(&s.bus, &channels, s.cfg.history).await?;
    let items = model::timeline(&model::merge_newest_first(lists), &filter);
    Ok(Json(json!({
        "items": items,
        "count": items.len(),
        "limit": filter.limit(),
        "read_per_stream": s.cfg.history,
    })))
}

/// An audit entry that is not a responder decision: a silence added or expired, a breaker
/// reset, an escalation.
#[derive(Debug, Serialize)]
struct AuditAction {
    stream_id: String,
    at: Option<DateTime<Utc>>,
    event_type: String,
    fields: BTreeMap<String, Value>,
}

/// When a stream entry was added, from its id (`<ms>-<seq>`).
fn entry_time(stream_id: &str) -> Option<DateTime<Utc>> {
    let ms = stream_id.split('-').next()?.parse::<i64>().ok()?;
    DateTime::from_timestamp_millis(ms)
}

async fn remediations(State(s): State<AppState>) -> ApiResult<Value> {
    let (audit, complete, needed) = tokio::try_join!(
        async { store::audit(&s.bus, s.cfg.history).await },
        s.bus.recent(Channel::RemediationComplete, s.cfg.history),
        s.bus.recent(Channel::RemediationNeeded, s.cfg.history),
    )?;
    let mut decisions: Vec<Envelope> = Vec::new();
    let mut actions = Vec::new();
    for e in &audit {
        match e.envelope() {
            Some(env) if matches!(env.payload, Payload::RemediationComplete(_)) => {
                decisions.push(env)
            }
            _ => actions.push(AuditAction {
                stream_id: e.stream_id.clone(),
                at: entry_time(&e.stream_id),
                event_type: e.get("event_type").to_owned(),
                fields: e
                    .fields
                    .iter()
                    .filter(|(k, _)| k.as_str() != "event_type")
                    .map(|(k, v)| {
                        // Envelopes and silences are JSON: show them as such.
                        let v = match k.as_str() {
                            "envelope" | "silence" => {
                                serde_json::from_str(v).unwrap_or(Value::String(v.clone()))
                            }
                            _ => Value::String(v.clone()),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            }),
        }
    }
    // The audit stream and the channel stream hold the same decisions; either may reach back
    // further, so both are read and each decision is kept once.
    let decisions = model::merge_newest_first(vec![decisions, complete]);
    Ok(Json(json!({
        "remediations": model::remediations(&decisions, &needed),
        "audit": actions,
    })))
}

async fn alerts(State(s): State<AppState>) -> ApiResult<Value> {
    let (history, escalations) = tokio::try_join!(
        async { store::entries(&s.bus, hemostat_alert::HISTORY_STREAM, s.cfg.history).await },
        s.bus.recent(Channel::Alerts, s.cfg.history),
    )?;
    let silences = hemostat_alert::load_silences(&s.bus).await?;
    let mut decisions: BTreeMap<String, usize> = ["sent", "folded", "silenced", "failed"]
        .into_iter()
        .map(|d| (d.to_owned(), 0))
        .collect();
    let notifications: Vec<Value> = history
        .iter()
        .map(|e| {
            *decisions.entry(e.get("decision").to_owned()).or_default() += 1;
            json!({
                "stream_id": e.stream_id,
                "at": e.fields.get("at").cloned().or_else(|| entry_time(&e.stream_id).map(|t| t.to_rfc3339())),
                "decision": e.get("decision"),
                "sink": e.get("sink"),
                "fingerprint": e.get("fingerprint"),
                "event_id": e.get("event_id"),
                "detail": e.get("detail"),
            })
        })
        .collect();
    let escalations: Vec<model::TimelineItem> =
        escalations.iter().map(model::TimelineItem::new).collect();
    Ok(Json(json!({
        "notifications": notifications,
        "decisions": decisions,
        "silences": silences,
        "escalations": escalations,
    })))
}

async fn agents(State(s): State<AppState>) -> ApiResult<Value> {
    let now = Utc::now();
    let rows = agent_rows(&s, now).await?;
    Ok(Json(json!({ "agents": rows, "generated_at": now })))
}

async fn events(State(s): State<AppState>) -> impl IntoResponse {
    // A buffering reverse proxy (nginx) would hold events back until its buffer fills.
    ([("x-accel-buffering", "no")], s.live.sse())
}

// ---------------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------------

/// Checks the token and names who acts. Refusals are counted, never logged with the header.
pub(crate) fn authorize(s: &Inner, headers: &HeaderMap, action: &str) -> Result<String, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(d) = auth::authorize(s.cfg.token.as_ref(), header) {
        let result = match d {
            Denied::ReadOnly => "read_only",
            Denied::BadToken | Denied::NoReadToken => "unauthorized",
        };
        count(s, action, result);
        tracing::info!(action, result, "action refused");
        return Err(ApiError::Denied(d));
    }
    let actor = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(clean_actor)
        .filter(|a| !a.is_empty());
    Ok(match actor {
        Some(a) => format!("{DEFAULT_ACTOR}:{a}"),
        None => DEFAULT_ACTOR.to_owned(),
    })
}

/// What a person typed as their name, made safe to store and show: printable, short.
pub(crate) fn clean_actor(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
        .trim()
        .to_owned()
}

pub(crate) fn count(s: &Inner, action: &str, result: &str) {
    s.actions
        .get_or_create(&ActionLabel {
            action: action.to_owned(),
            result: result.to_owned(),
        })
        .inc();
}

/// A host or container name as a matcher or key part: non-empty, short, no spaces or control
/// characters (they could not have come from Docker).
/// `s` as one URL path segment.
pub(crate) fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A person's action as one audit entry (`event_type`, `fields`, `by`, `at`), ready to run.
pub(crate) fn audit_entry(
    s: &Inner,
    event_type: &str,
    fields: &[(&str, &str)],
    by: &str,
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    let cmd = pipe
        .cmd("XADD")
        .arg(AUDIT_STREAM)
        .arg("MAXLEN")
        .arg("~")
        .arg(s.stream_maxlen)
        .arg("*")
        .arg("event_type")
        .arg(event_type);
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.arg("by")
        .arg(by)
        .arg("at")
        .arg(Utc::now().to_rfc3339())
        .ignore();
    pipe
}

pub(crate) fn check_name(what: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::BadRequest(format!(
            "{what} must be a non-empty name without spaces (at most 253 characters)"
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ResetBreaker {
    host: String,
    container: String,
}

async fn reset_breaker(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ResetBreaker>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let by = authorize(&s, &headers, "reset_breaker")?;
    let Json(req) = body?;
    let (host, name) = (req.host.trim(), req.container.trim());
    check_name("host", host)?;
    check_name("container", name)?;
    let was_open = {
        let mut conn = s.bus.connection();
        let n: i64 = redis::cmd("EXISTS")
            .arg(store::breaker_key(host, name))
            .query_async(&mut conn)
            .await
            .map_err(BusError::from)?;
        n > 0
    };
    let deleted = hemostat_responder::reset_breaker(&s.bus, host, name).await?;
    // reset_breaker does not audit (its CLI is run by a person at the host); the dashboard is
    // remote, so it records who did it.
    let pipe = audit_entry(
        &s,
        "breaker_reset",
        &[
            ("host", host),
            ("container", name),
            ("was_open", if was_open { "true" } else { "false" }),
        ],
        &by,
    );
    if let Err(e) = s.bus.run(&pipe).await {
        count(&s, "reset_breaker", "not_audited");
        return Err(ApiError::Redis(format!(
            "the breaker of {host}/{name} was reset, but the audit entry could not be written: {e}"
        )));
    }
    count(&s, "reset_breaker", "ok");
    tracing::info!(host, container = name, was_open, by = %by, "breaker reset from the dashboard");
    Ok(Json(json!({
        "host": host,
        "container": name,
        "was_open": was_open,
        "deleted_keys": deleted,
        "by": by,
    })))
}

#[derive(Debug, Deserialize)]
struct NewSilence {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    /// `30m`, `2h`, ... (at most 30 days).
    duration: String,
    #[serde(default)]
    comment: String,
}

fn matcher(what: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(m) => {
            check_name(what, &m)?;
            Ok(Some(m))
        }
    }
}

async fn add_silence(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewSilence>, JsonRejection>,
) -> Result<(StatusCode, Json<Silence>), ApiError> {
    let by = authorize(&s, &headers, "add_silence")?;
    let Json(req) = body?;
    let host = matcher("host", req.host)?;
    let container = matcher("container", req.container)?;
    let kind = matcher("kind", req.kind)?;
    if host.is_none() && container.is_none() && kind.is_none() {
        return Err(ApiError::BadRequest(
            "a silence needs at least one of host, container or kind (use * to match any)".into(),
        ));
    }
    let duration = hemostat_common::config::parse_duration(&req.duration)
        .map_err(|e| ApiError::BadRequest(format!("duration: {e}")))?;
    if duration.is_zero() {
        return Err(ApiError::BadRequest("duration: must be more than 0".into()));
    }
    let for_how_long = chrono::Duration::from_std(duration)
        .map_err(|e| ApiError::BadRequest(format!("duration: {e}")))?;
    let now = Utc::now();
    let silence = Silence {
        id: ulid::Ulid::new().to_string(),
        host,
        container,
        kind,
        expires_at: now + for_how_long,
        comment: req
            .comment
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect(),
        created_by: by,
        created_at: now,
    };
    // add_silence writes the silence and its `silence_added` audit entry in one transaction.
    hemostat_alert::add_silence(&s.bus, &silence).await?;
    count(&s, "add_silence", "ok");
    tracing::info!(id = %silence.id, by = %silence.created_by, "silence added from the dashboard");
    Ok((StatusCode::CREATED, Json(silence)))
}

async fn expire_silence(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let by = authorize(&s, &headers, "expire_silence")?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::BadRequest(
            "a silence id is letters and digits (a ULID)".into(),
        ));
    }
    // expire_silence records `silence_expired` with who asked, whether or not it existed.
    if !hemostat_alert::expire_silence(&s.bus, &id, &by).await? {
        count(&s, "expire_silence", "not_found");
        return Err(ApiError::NotFound(format!("no active silence {id}")));
    }
    count(&s, "expire_silence", "ok");
    tracing::info!(id = %id, by = %by, "silence expired from the dashboard");
    Ok(Json(json!({ "id": id, "expired": true, "by": by })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_names_are_cleaned() {
        assert_eq!(clean_actor("  ana\n\u{7}  "), "ana");
        assert_eq!(clean_actor(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("host", "docker-01").is_ok());
        for bad in ["", "a b", "a\nb", &"x".repeat(300)] {
            assert!(check_name("host", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entry_times_come_from_stream_ids() {
        assert_eq!(
            entry_time("1795330749190-0").map(|t| t.timestamp_millis()),
            Some(1_795_330_749_190)
        );
        assert_eq!(entry_time("garbage"), None);
    }
}
