//! One HTTP server on 127.0.0.1 that speaks the notification services' APIs as their clients
//! see them: Slack and Discord incoming webhooks, Teams connectors, ntfy, Gotify, the Telegram
//! Bot API, Pushover, the Matrix client-server API, PagerDuty Events v2, the Opsgenie Alert
//! API and a plain JSON webhook. Each endpoint checks what the real one checks (method,
//! path, credentials, content type, required fields, Telegram's HTML subset) and answers as
//! the real one does, success or error, so a sink that gets "sent" made a request the
//! service would have taken. Every request is recorded with the service it reached.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The credential every service here accepts (and the one test URLs carry).
pub const SECRET: &str = "s3cr3t-T0KEN";
/// The Telegram bot token accepted.
pub const BOT_TOKEN: &str = "123456:s3cr3t-T0KEN";

/// One request, as the service it reached saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// `slack`, `discord`, `teams`, `ntfy`, `gotify`, `telegram`, `pushover`, `matrix`,
    /// `pagerduty`, `opsgenie` or `json`.
    pub service: &'static str,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    /// The status it answered.
    pub status: u16,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A form field (Pushover), percent-decoded.
    pub fn form(&self, key: &str) -> Option<String> {
        self.body.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Default)]
struct Shared {
    hits: Vec<Hit>,
    /// Matrix transaction ids seen, and the event each made: a repeated id makes no new event.
    matrix_txns: HashMap<String, String>,
}

/// The running server; it stops when dropped.
#[derive(Debug)]
pub struct ChatServices {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ChatServices {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reply: status and JSON body.
fn reply(status: u16, body: Value) -> (u16, Value) {
    (status, body)
}

/// Tags Telegram's HTML mode accepts; anything else makes it answer 400.
const TELEGRAM_TAGS: [&str; 12] = [
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
];

/// Whether `text` is HTML Telegram would parse: only its tags, and `&` only in entities.
fn telegram_html_ok(text: &str) -> bool {
    let mut rest = text;
    while let Some(i) = rest.find(['<', '&']) {
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix('&') {
            let ok = ["lt;", "gt;", "amp;", "quot;"]
                .iter()
                .any(|e| after.starts_with(e));
            if !ok {
                return false;
            }
            rest = after;
            continue;
        }
        let Some(end) = tail.find('>') else {
            return false;
        };
        let tag = tail[1..end].trim_start_matches('/');
        let name = tag.split_whitespace().next().unwrap_or("");
        if !TELEGRAM_TAGS.contains(&name) {
            return false;
        }
        rest = &tail[end + 1..];
    }
    true
}

fn header<'a>(h: &'a HashMap<String, String>, k: &str) -> &'a str {
    h.get(k).map(String::as_str).unwrap_or("")
}

/// Decides what the service behind `path` answers.
fn answer(
    shared: &mut Shared,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HashMap<String, String>,
    body: &str,
) -> (&'static str, u16, Value) {
    let json_body: Option<Value> = serde_json::from_str(body).ok();
    let is_json = header(headers, "content-type").starts_with("application/json");
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let post = method == Method::POST;
    match seg.as_slice() {
        ["services", _, _, token] => {
            let (s, v) = if !post || !is_json {
                reply(400, json!("invalid_payload"))
            } else if *token != SECRET {
                reply(403, json!("invalid_token"))
            } else if json_body
                .as_ref()
                .and_then(|v| v["text"].as_str())
                .is_none()
            {
                reply(400, json!("no_text"))
            } else {
                reply(200, json!("ok"))
            };
            ("slack", s, v)
        }
        ["api", "webhooks", _, token] => {
            let v = json_body.unwrap_or(Value::Null);
            let (s, b) = if !post || !is_json {
                reply(
                    415,
                    json!({"message": "Cannot send an empty message", "code": 50006}),
                )
            } else if *token != SECRET {
                reply(
                    401,
                    json!({"message": "Invalid Webhook Token", "code": 50027}),
                )
            } else if v["content"].as_str().is_none_or(str::is_empty) && v["embeds"].is_null() {
                reply(
                    400,
                    json!({"message": "Cannot send an empty message", "code": 50006}),
                )
            } else {
                reply(204, Value::Null)
            };
            ("discord", s, b)
        }
        ["teams", ..] => {
            let v = json_body.unwrap_or(Value::Null);
            let ok = post && is_json && v["@type"] == "MessageCard" && v["text"].is_string();
            (
                "teams",
                if ok { 200 } else { 400 },
                json!(if ok { "1" } else { "Bad payload" }),
            )
        }
        [first, "sendMessage"] if first.starts_with("bot") => {
            let token = first.trim_start_matches("bot");
            let v = json_body.unwrap_or(Value::Null);
            let text = v["text"].as_str().unwrap_or("");
            let (s, b) = if token != BOT_TOKEN {
                reply(
                    401,
                    json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
                )
            } else if !post || !is_json || v["chat_id"].is_null() || text.is_empty() {
                reply(
                    400,
                    json!({"ok": false, "error_code": 400, "description": "Bad Request: message text is empty"}),
                )
            } else if v["parse_mode"] == "HTML" && !telegram_html_ok(text) {
                reply(
                    400,
                    json!({"ok": false, "error_code": 400, "description": "Bad Request: can't parse entities"}),
                )
            } else if text.chars().count() > 4096 {
                reply(
                    400,
                    json!({"ok": false, "error_code": 400, "description": "Bad Request: message is too long"}),
                )
            } else {
                reply(
                    200,
                    json!({"ok": true, "result": {"message_id": 1, "chat": {"id": v["chat_id"]}, "text": text}}),
                )
            };
            ("telegram", s, b)
        }
        ["1", "messages.json"] => {
            let hit = Hit {
                service: "pushover",
                method: method.to_string(),
                path: path.into(),
                query: query.into(),
                headers: headers.clone(),
                body: body.into(),
                status: 0,
            };
            let form_ok =
                header(headers, "content-type").starts_with("application/x-www-form-urlencoded");
            let (s, b) = if !post || !form_ok {
                reply(
                    400,
                    json!({"status": 0, "errors": ["message cannot be blank"]}),
                )
            } else if hit.form("token").as_deref() != Some(SECRET) {
                reply(
                    400,
                    json!({"status": 0, "errors": ["application token is invalid"]}),
                )
            } else if hit.form("user").is_none_or(|u| u.is_empty()) {
                reply(
                    400,
                    json!({"status": 0, "errors": ["user identifier is not a valid user"]}),
                )
            } else if hit
                .form("message")
                .is_none_or(|m| m.is_empty() || m.chars().count() > 1024)
            {
                reply(
                    400,
                    json!({"status": 0, "errors": ["message cannot be blank"]}),
                )
            } else {
                reply(200, json!({"status": 1, "request": "req-1"}))
            };
            ("pushover", s, b)
        }
        [
            "_matrix",
            "client",
            "v3",
            "rooms",
            _room,
            "send",
            "m.room.message",
            txn,
        ] => {
            let v = json_body.unwrap_or(Value::Null);
            let (s, b) = if header(headers, "authorization") != format!("Bearer {SECRET}") {
                reply(
                    401,
                    json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Unrecognised access token"}),
                )
            } else if method != Method::PUT
                || v["msgtype"].as_str().is_none()
                || v["body"].as_str().is_none()
            {
                reply(400, json!({"errcode": "M_BAD_JSON", "error": "bad event"}))
            } else {
                let n = shared.matrix_txns.len();
                let id = shared
                    .matrix_txns
                    .entry((*txn).to_owned())
                    .or_insert_with(|| format!("$event{n}"))
                    .clone();
                reply(200, json!({"event_id": id}))
            };
            ("matrix", s, b)
        }
        [.., "message"] => {
            let v = json_body.unwrap_or(Value::Null);
            let (s, b) = if header(headers, "x-gotify-key") != SECRET {
                reply(
                    401,
                    json!({"error": "Unauthorized", "errorCode": 401, "errorDescription": "you need to provide a valid access token"}),
                )
            } else if !post || v["message"].as_str().is_none_or(str::is_empty) {
                reply(
                    400,
                    json!({"error": "Bad Request", "errorCode": 400, "errorDescription": "Field 'message' is required"}),
                )
            } else {
                reply(
                    200,
                    json!({"id": 1, "appid": 1, "message": v["message"], "title": v["title"], "priority": v["priority"]}),
                )
            };
            ("gotify", s, b)
        }
        ["v2", "enqueue"] => {
            let v = json_body.unwrap_or(Value::Null);
            let ok = post
                && v["routing_key"] == SECRET
                && matches!(
                    v["event_action"].as_str(),
                    Some("trigger" | "resolve" | "acknowledge")
                )
                && (v["event_action"] != "trigger" || v["payload"]["summary"].is_string());
            let (s, b) = if ok {
                reply(
                    202,
                    json!({"status": "success", "message": "Event processed", "dedup_key": v["dedup_key"]}),
                )
            } else {
                reply(
                    400,
                    json!({"status": "invalid event", "message": "Event object is invalid"}),
                )
            };
            ("pagerduty", s, b)
        }
        ["v2", "alerts", ..] => {
            let v = json_body.unwrap_or(Value::Null);
            let closing = seg.len() == 4 && seg[3] == "close";
            let (s, b) = if header(headers, "authorization") != format!("GenieKey {SECRET}") {
                reply(
                    401,
                    json!({"message": "Could not authenticate", "took": 0.0, "requestId": "r"}),
                )
            } else if !post
                || (!closing
                    && v["message"]
                        .as_str()
                        .is_none_or(|m| m.is_empty() || m.chars().count() > 130))
                || (closing && !query.contains("identifierType=alias"))
            {
                reply(
                    422,
                    json!({"message": "Request body is not processable", "took": 0.0, "requestId": "r"}),
                )
            } else {
                reply(
                    202,
                    json!({"result": "Request will be processed", "took": 0.01, "requestId": "r"}),
                )
            };
            ("opsgenie", s, b)
        }
        ["hook", ..] => {
            let ok = post && is_json && json_body.is_some();
            ("json", if ok { 200 } else { 400 }, json!({"ok": ok}))
        }
        // ntfy: `POST /<topic>` with a plain body and its headers.
        [topic] if !topic.is_empty() => {
            let (s, b) = if !post || body.is_empty() {
                reply(
                    400,
                    json!({"code": 40001, "http": 400, "error": "invalid request"}),
                )
            } else {
                reply(
                    200,
                    json!({"id": "n1", "event": "message", "topic": topic, "message": body, "title": header(headers, "title")}),
                )
            };
            ("ntfy", s, b)
        }
        _ => ("unknown", 404, json!({"error": "not found"})),
    }
}

async fn handle(
    State(shared): State<Arc<Mutex<Shared>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    let (service, status, out) = answer(&mut s, &method, &path, &query, &headers, &body);
    s.hits.push(Hit {
        service,
        method: method.to_string(),
        path,
        query,
        headers,
        body,
        status,
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if out.is_null() {
        code.into_response()
    } else {
        (code, axum::Json(out)).into_response()
    }
}

impl ChatServices {
    pub async fn start() -> ChatServices {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind chat services");
        let addr = listener.local_addr().expect("chat services addr");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ChatServices { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hits
            .clone()
    }

    /// Waits (up to `timeout`) until `pred` holds for the requests so far; returns them.
    pub async fn wait_until(
        &self,
        timeout: std::time::Duration,
        pred: impl Fn(&[Hit]) -> bool,
    ) -> Vec<Hit> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let h = self.hits();
            if pred(&h) || std::time::Instant::now() >= deadline {
                return h;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}
