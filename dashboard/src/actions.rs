//! A person's hand on the healer: proposals to approve or decline (approve mode), a "restart
//! now" that goes through the responder's guards like any other request, and maintenance
//! windows. Each is written to the audit stream with who did it.
//!
//! A proposal can be decided two ways: with the action token (`POST /api/proposals/...`), or
//! with the signed link a chat message carries (`/approve/<host>/<id>?sig=...`). Opening the
//! link only shows the proposal; the decision is a button on that page (a POST), so a chat's
//! link preview, which fetches every link it sees, decides nothing.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{TimeZone, Utc};
use hemostat_common::events::{
    AUDIT_STREAM, Action, AnalysisMethod, Channel, ContainerRef, Envelope, EscalationKind, Payload,
    RemediationRequest, proposals, responder_reported_key,
};
use hemostat_common::maintenance::Window;
use hemostat_common::windows::{self, WindowSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{ApiError, AppState, audit_entry, authorize, check_name, count};

/// Proposals looked at: the newest approval escalations on `hemostat:stream:alerts`.
const PROPOSALS_SCANNED: usize = 500;

/// Where a proposal stands, as the dashboard shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProposalRow {
    pub host: String,
    pub id: String,
    pub container: String,
    pub action: String,
    pub root_cause: String,
    pub reason: String,
    pub proposed_at: Option<String>,
    pub expires_at: Option<String>,
    /// `pending`, `approved`, `declined`, `expired` or `done` (reported by the responder).
    pub state: String,
    /// Who decided, when someone did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

fn rfc3339(ms: u64) -> Option<String> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .map(|t| t.to_rfc3339())
}

/// One proposal's record and state, or `None` when there is no such proposal.
async fn proposal(s: &AppState, host: &str, id: &str) -> Result<Option<ProposalRow>, ApiError> {
    let mut conn = s.bus.connection();
    let (record, decision, reported): (
        std::collections::HashMap<String, String>,
        Option<String>,
        bool,
    ) = redis::pipe()
        .cmd("HGETALL")
        .arg(proposals::proposal(host, id))
        .cmd("GET")
        .arg(proposals::decision(host, id))
        .cmd("EXISTS")
        .arg(responder_reported_key(host, id))
        .query_async(&mut conn)
        .await
        .map_err(hemostat_common::bus::BusError::from)?;
    let Some(expires_ms) = record.get("expires_ms").and_then(|v| v.parse::<u64>().ok()) else {
        return Ok(None);
    };
    let now = Utc::now().timestamp_millis().max(0) as u64;
    let (state, decided_by) = match decision.as_deref().and_then(|d| d.split_once(':')) {
        _ if reported => ("done", None),
        Some(("approved", who)) => ("approved", Some(who.to_owned())),
        Some(("declined", who)) => ("declined", Some(who.to_owned())),
        _ if now >= expires_ms => ("expired", None),
        _ => ("pending", None),
    };
    let get = |k: &str| record.get(k).cloned().unwrap_or_default();
    Ok(Some(ProposalRow {
        host: host.to_owned(),
        id: id.to_owned(),
        container: get("container"),
        action: get("action"),
        root_cause: get("root_cause"),
        reason: get("reason"),
        proposed_at: record
            .get("proposed_ms")
            .and_then(|v| v.parse().ok())
            .and_then(rfc3339),
        expires_at: rfc3339(expires_ms),
        state: state.to_owned(),
        decided_by,
    }))
}

/// `GET /api/proposals`: the recent proposals, newest first, with their state.
pub async fn list_proposals(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let alerts = s.bus.recent(Channel::Alerts, PROPOSALS_SCANNED).await?;
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for env in alerts {
        let Payload::Escalation(e) = &env.payload else {
            continue;
        };
        let (EscalationKind::ApprovalNeeded, Some(p)) = (&e.kind, &e.proposal) else {
            continue;
        };
        if !seen.insert((env.host.clone(), p.id.clone())) {
            continue;
        }
        if let Some(row) = proposal(&s, &env.host, &p.id).await? {
            rows.push(row);
        }
    }
    let pending = rows.iter().filter(|r| r.state == "pending").count();
    Ok(Json(json!({ "proposals": rows, "pending": pending })))
}

/// How a decision went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    Recorded,
    /// No such proposal.
    Unknown,
    /// The responder reported it already (acted, or withdrew it).
    Done,
    Expired,
    /// Someone decided first: their decision.
    Already(String),
}

/// Records `approve` (or decline) of proposal `id` on `host` by `by`, once: the first decision
/// wins, a decision after expiry or after the responder reported counts for nothing, and the
/// decision and its audit entry are one step.
pub async fn decide(
    s: &AppState,
    host: &str,
    id: &str,
    approve: bool,
    by: &str,
) -> Result<Decided, ApiError> {
    const SCRIPT: &str = r"
        local exp = redis.call('HGET', KEYS[1], 'expires_ms')
        if not exp then return 'unknown' end
        if redis.call('EXISTS', KEYS[3]) == 1 then return 'done' end
        if tonumber(exp) <= tonumber(ARGV[2]) then return 'expired' end
        local ok = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[3])
        if not ok then return 'already:' .. (redis.call('GET', KEYS[2]) or '') end
        redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*',
            'event_type', ARGV[5], 'host', ARGV[6], 'request_id', ARGV[7], 'by', ARGV[8],
            'at', ARGV[9])
        return 'ok'
    ";
    let verdict = if approve { "approved" } else { "declined" };
    let now = Utc::now();
    let mut conn = s.bus.connection();
    let r: String = redis::Script::new(SCRIPT)
        .key(proposals::proposal(host, id))
        .key(proposals::decision(host, id))
        .key(responder_reported_key(host, id))
        .key(AUDIT_STREAM)
        .arg(format!("{verdict}:{by}"))
        .arg(now.timestamp_millis())
        .arg(8 * 86_400_000u64)
        .arg(s.stream_maxlen)
        .arg(format!("proposal_{verdict}"))
        .arg(host)
        .arg(id)
        .arg(by)
        .arg(now.to_rfc3339())
        .invoke_async(&mut conn)
        .await
        .map_err(hemostat_common::bus::BusError::from)?;
    Ok(match r.as_str() {
        "ok" => Decided::Recorded,
        "unknown" => Decided::Unknown,
        "done" => Decided::Done,
        "expired" => Decided::Expired,
        other => Decided::Already(other.trim_start_matches("already:").to_owned()),
    })
}

fn decided_json(d: &Decided, approve: bool) -> Result<Json<Value>, ApiError> {
    match d {
        Decided::Recorded => Ok(Json(json!({
            "decision": if approve { "approved" } else { "declined" },
            "note": if approve {
                "the responder acts within seconds if the problem still holds and every guard passes"
            } else {
                "nothing will be done"
            },
        }))),
        Decided::Unknown => Err(ApiError::NotFound("no such proposal".into())),
        Decided::Done => Err(ApiError::Conflict(
            "the responder has reported on it already (the problem went away, or it was decided)"
                .into(),
        )),
        Decided::Expired => Err(ApiError::Conflict("the proposal expired".into())),
        Decided::Already(d) => Err(ApiError::Conflict(format!("decided already: {d}"))),
    }
}

/// `POST /api/proposals/{host}/{id}/{approve|decline}` (the action token).
pub async fn decide_api(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((host, id, verdict)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let approve = match verdict.as_str() {
        "approve" => true,
        "decline" => false,
        _ => {
            return Err(ApiError::NotFound(
                "expected .../approve or .../decline".into(),
            ));
        }
    };
    let by = authorize(&s, &headers, "decide_proposal")?;
    check_name("host", &host)?;
    check_id(&id)?;
    let d = decide(&s, &host, &id, approve, &by).await?;
    count(
        &s,
        "decide_proposal",
        if d == Decided::Recorded {
            "ok"
        } else {
            "refused"
        },
    );
    tracing::info!(%host, request = %id, approve, by = %by, result = ?d, "proposal decision");
    decided_json(&d, approve)
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::BadRequest(
            "a proposal id is letters and digits (the request's ULID)".into(),
        ));
    }
    Ok(())
}

/// The signing key, if a responder has made it.
async fn signing_key(s: &AppState) -> Result<Option<Vec<u8>>, ApiError> {
    let mut conn = s.bus.connection();
    let k: Option<String> = redis::cmd("GET")
        .arg(proposals::SIGNING_KEY)
        .query_async(&mut conn)
        .await
        .map_err(hemostat_common::bus::BusError::from)?;
    Ok(k.map(String::into_bytes))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A small page of our own: the only page that posts a form, so it alone allows one.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{t} · hemostat</title><link rel=stylesheet href=\"/assets/app.css\"></head>\
         <body class=approve><main><h1>{t}</h1>{body}<p><a href=\"/\">Open the dashboard</a></p></main></body></html>",
        t = html_escape(title)
    );
    let mut r = (status, Html(html)).into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

#[derive(Debug, Deserialize)]
pub struct SigQuery {
    #[serde(default)]
    sig: String,
}

/// `GET /approve/{host}/{id}?sig=...`: the proposal and two buttons. Decides nothing.
pub async fn approve_page(
    State(s): State<AppState>,
    Path((host, id)): Path<(String, String)>,
    Query(q): Query<SigQuery>,
) -> Response {
    match approve_page_inner(&s, &host, &id, &q.sig).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn approve_page_inner(
    s: &AppState,
    host: &str,
    id: &str,
    sig: &str,
) -> Result<Response, ApiError> {
    check_name("host", host)?;
    check_id(id)?;
    let Some(key) = signing_key(s).await? else {
        return Ok(page(
            StatusCode::FORBIDDEN,
            "Link not valid",
            "<p>This link is not signed by this hemostat.</p>",
        ));
    };
    if !proposals::verify(&key, host, id, sig) {
        count(s, "approve_link", "bad_signature");
        return Ok(page(
            StatusCode::FORBIDDEN,
            "Link not valid",
            "<p>This link is not signed by this hemostat.</p>",
        ));
    }
    let Some(p) = proposal(s, host, id).await? else {
        return Ok(page(
            StatusCode::NOT_FOUND,
            "No such proposal",
            "<p>It may have been forgotten: proposals are kept a week.</p>",
        ));
    };
    let facts = format!(
        "<dl><dt>Action</dt><dd>{}</dd><dt>Container</dt><dd>{}</dd><dt>Host</dt><dd>{}</dd>\
         <dt>Root cause</dt><dd>{}</dd><dt>Why</dt><dd>{}</dd><dt>Expires</dt><dd>{}</dd>\
         <dt>State</dt><dd>{}{}</dd></dl>",
        html_escape(&p.action),
        html_escape(&p.container),
        html_escape(host),
        html_escape(&p.root_cause),
        html_escape(&p.reason),
        html_escape(p.expires_at.as_deref().unwrap_or("-")),
        html_escape(&p.state),
        p.decided_by
            .as_deref()
            .map(|b| format!(" by {}", html_escape(b)))
            .unwrap_or_default()
    );
    let body = if p.state == "pending" {
        format!(
            "{facts}<form method=post action=\"/approve/{h}/{i}\">\
             <input type=hidden name=sig value=\"{sig}\">\
             <label>Your name <input name=name maxlength=64 autocomplete=name></label>\
             <p>hemostat acts only if the problem still holds and every safety guard passes.</p>\
             <button name=decision value=approve>Approve {a}</button> \
             <button name=decision value=decline>Decline</button></form>",
            h = html_escape(&crate::api::url_segment(host)),
            i = html_escape(id),
            sig = html_escape(sig),
            a = html_escape(&p.action),
        )
    } else {
        facts
    };
    Ok(page(
        StatusCode::OK,
        &format!("Proposed: {} {}", p.action, p.container),
        &body,
    ))
}

/// A form body's fields (`application/x-www-form-urlencoded`).
fn form_fields(body: &str) -> std::collections::HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((form_decode(k), form_decode(v)))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /approve/{host}/{id}`: the signed link's decision.
pub async fn approve_post(
    State(s): State<AppState>,
    Path((host, id)): Path<(String, String)>,
    body: String,
) -> Response {
    let f = form_fields(&body);
    let sig = f.get("sig").map(String::as_str).unwrap_or("");
    let approve = match f.get("decision").map(String::as_str) {
        Some("approve") => true,
        Some("decline") => false,
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                "No decision",
                "<p>Choose approve or decline.</p>",
            );
        }
    };
    let name = crate::api::clean_actor(f.get("name").map(String::as_str).unwrap_or(""));
    let by = if name.is_empty() {
        "chat-link".to_owned()
    } else {
        format!("chat-link:{name}")
    };
    let r = async {
        check_name("host", &host)?;
        check_id(&id)?;
        let key = signing_key(&s).await?.unwrap_or_default();
        if !proposals::verify(&key, &host, &id, sig) {
            count(&s, "approve_link", "bad_signature");
            return Ok(page(StatusCode::FORBIDDEN, "Link not valid", "<p>This link is not signed by this hemostat.</p>"));
        }
        let d = decide(&s, &host, &id, approve, &by).await?;
        count(&s, "decide_proposal", if d == Decided::Recorded { "ok" } else { "refused" });
        tracing::info!(%host, request = %id, approve, by = %by, result = ?d, "proposal decision");
        Ok::<Response, ApiError>(match d {
            Decided::Recorded if approve => page(StatusCode::OK, "Approved", "<p>Approved. hemostat acts within seconds if the problem still holds and every safety guard passes; the result appears in the dashboard and the chat.</p>"),
            Decided::Recorded => page(StatusCode::OK, "Declined", "<p>Declined: nothing will be done.</p>"),
            Decided::Unknown => page(StatusCode::NOT_FOUND, "No such proposal", ""),
            Decided::Done => page(StatusCode::CONFLICT, "Already settled", "<p>The responder has reported on it already.</p>"),
            Decided::Expired => page(StatusCode::CONFLICT, "Expired", "<p>The proposal expired; nothing was done.</p>"),
            Decided::Already(d) => page(StatusCode::CONFLICT, "Decided already", &format!("<p>{}</p>", html_escape(&d))),
        })
    }
    .await;
    r.unwrap_or_else(|e| e.into_response())
}

#[derive(Debug, Deserialize)]
pub struct RestartNow {
    host: String,
    container: String,
    #[serde(default)]
    reason: String,
}

/// `POST /api/restart`: a person's "restart now". It goes to the responder of that host as a
/// request of its own and passes the same guards (scope, protection, a person's stop or
/// pause, restart policy, storm, breaker, backoff, rate limit, lock); only the checks that
/// stand for a person (the problem must still hold, approval, maintenance) are answered by
/// the person asking. The result arrives on `hemostat:remediation_complete`.
pub async fn restart_now(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RestartNow>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let by = authorize(&s, &headers, "restart_now")?;
    let Json(req) = body?;
    let (host, name) = (
        req.host.trim(),
        req.container.trim().trim_start_matches('/'),
    );
    check_name("host", host)?;
    check_name("container", name)?;
    let reason: String = req
        .reason
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    let env = Envelope::new(
        crate::AGENT,
        host,
        Payload::PersonRequest(RemediationRequest {
            container: Some(ContainerRef {
                // The responder looks it up by id, then by name.
                id: name.to_owned(),
                name: name.to_owned(),
                ..ContainerRef::default()
            }),
            target_host: host.to_owned(),
            action: Action::Restart,
            root_cause: format!("a person asked for a restart ({by})"),
            reason: if reason.is_empty() {
                "restart now, from the dashboard".into()
            } else {
                reason
            },
            confidence: 1.0,
            analysis_method: AnalysisMethod::Person,
            fallback_reason: None,
            alert_id: String::new(),
            problem: None,
            requested_by: Some(by.clone()),
        }),
    );
    let pipe = audit_entry(
        &s,
        "restart_requested",
        &[("host", host), ("container", name), ("request_id", &env.id)],
        &by,
    );
    s.bus.run(&pipe).await?;
    s.bus.publish(&env).await?;
    count(&s, "restart_now", "ok");
    tracing::info!(%host, container = %name, by = %by, request = %env.id, "restart requested from the dashboard");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "request_id": env.id,
            "note": "the responder judges it with every guard; the outcome appears under remediations",
        })),
    ))
}

/// `GET /api/maintenance`: every window, and whether each holds now.
pub async fn list_windows(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = windows::load(&s.bus).await?;
    let now = Utc::now();
    let rows: Vec<Value> = list
        .iter()
        .map(|w: &Window| {
            let active = w.active_at(now);
            json!({
                "window": w,
                "describe": w.describe(),
                "active": active.is_some(),
                "until": active.map(|o| o.end.to_rfc3339()),
                "next": w.next_after(now).map(|o| o.start.to_rfc3339()),
            })
        })
        .collect();
    Ok(Json(json!({ "windows": rows })))
}

/// `POST /api/maintenance` with a [`WindowSpec`]: opens a window (a backup script's
/// `curl -X POST -H "Authorization: Bearer ..." -d '{"for":"30m","container":"db*"}'`).
pub async fn add_window(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<WindowSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Window>), ApiError> {
    let by = authorize(&s, &headers, "add_maintenance")?;
    let Json(spec) = body?;
    let w = spec
        .into_window(Utc::now(), &by)
        .map_err(ApiError::BadRequest)?;
    windows::add(&s.bus, &w).await?;
    count(&s, "add_maintenance", "ok");
    tracing::info!(id = %w.id, by = %by, window = %w.describe(), "maintenance window added");
    Ok((StatusCode::CREATED, Json(w)))
}

/// `DELETE /api/maintenance/{id}`: ends a window now.
pub async fn end_window(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let by = authorize(&s, &headers, "end_maintenance")?;
    check_id(&id)?;
    if !windows::end(&s.bus, &id, &by).await? {
        count(&s, "end_maintenance", "not_found");
        return Err(ApiError::NotFound(format!("no maintenance window {id}")));
    }
    count(&s, "end_maintenance", "ok");
    tracing::info!(%id, by = %by, "maintenance window ended");
    Ok(Json(json!({ "id": id, "ended": true, "by": by })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode() {
        let f = form_fields("sig=ab12&decision=approve&name=Ana+Lopez%21");
        assert_eq!(f["sig"], "ab12");
        assert_eq!(f["decision"], "approve");
        assert_eq!(f["name"], "Ana Lopez!");
        assert_eq!(form_decode("%zz"), "%zz");
    }

    #[test]
    fn page_text_is_escaped() {
        assert_eq!(
            html_escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
