//! Turning a batch of notifications into each sink's wire format: Slack Block Kit (with a
//! plain-text fallback), Discord, Microsoft Teams, ntfy, plain JSON and PagerDuty Events v2.

use hemostat_common::events::{AnalysisMethod, Severity};
use serde_json::{Value, json};

use crate::engine::Batch;
use crate::notify::{Notification, Status};

/// Slack's limits: section text 3000 characters, header 150, at most 50 blocks.
const SLACK_TEXT_LIMIT: usize = 3000;
const SLACK_HEADER_LIMIT: usize = 150;
/// Notifications listed individually in one grouped message.
const GROUP_LIST_LIMIT: usize = 20;

/// Context every renderer may use.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// `HEMOSTAT_DASHBOARD_URL`, linked from messages when set.
    pub dashboard_url: Option<String>,
}

fn cut(s: &str, limit: usize) -> String {
    if s.chars().count() <= limit {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(limit.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The batch's overall severity: the worst firing one (a batch of recoveries is info).
pub fn worst(batch: &Batch) -> Severity {
    batch
        .notifications
        .iter()
        .filter(|n| n.status == Status::Firing)
        .map(|n| n.severity)
        .max()
        .unwrap_or(Severity::Info)
}

fn colour(s: Severity, resolved: bool) -> &'static str {
    if resolved {
        return "#2eb886";
    }
    match s {
        Severity::Critical => "#d40e0d",
        Severity::Warning => "#f2c744",
        Severity::Info => "#439fe0",
    }
}

fn emoji(n: &Notification) -> &'static str {
    match (n.status, n.severity) {
        (Status::Resolved, _) => "✅",
        (_, Severity::Critical) => "🔴",
        (_, Severity::Warning) => "🟠",
        (_, Severity::Info) => "🔵",
    }
}

fn method(m: AnalysisMethod) -> &'static str {
    match m {
        AnalysisMethod::Rules => "rules",
        AnalysisMethod::Llm => "LLM",
        AnalysisMethod::RulesFallback => "rules (LLM fallback)",
    }
}

fn status_word(n: &Notification) -> &'static str {
    match (n.status, n.outcome) {
        (Status::Resolved, _) => "RESOLVED",
        (Status::Firing, Some(_)) => "REMEDIATION",
        (Status::Firing, None) => "FIRING",
    }
}

/// One line per notification: used for fallbacks and grouped messages.
pub fn line(n: &Notification) -> String {
    let dry = if n.dry_run && !n.title.starts_with("[dry run]") {
        "[dry run] "
    } else {
        ""
    };
    format!(
        "{} {dry}{} — {} on {}",
        emoji(n),
        n.title,
        status_word(n),
        n.host
    )
}

/// The plain-text version of a batch (Slack's fallback `text`, ntfy's body, Discord content).
pub fn plain(batch: &Batch, ctx: &RenderContext) -> String {
    let mut out = match batch.notifications.as_slice() {
        [one] => {
            let mut s = line(one);
            if !one.text.is_empty() && one.text != one.title {
                s.push_str(&format!("\n{}", one.text));
            }
            if let Some(rc) = &one.root_cause {
                s.push_str(&format!("\nRoot cause: {rc}"));
            }
            s
        }
        many => {
            let mut s = format!("{} hemostat notifications:", many.len());
            for n in many.iter().take(GROUP_LIST_LIMIT) {
                s.push_str(&format!("\n• {}", line(n)));
            }
            if many.len() > GROUP_LIST_LIMIT {
                s.push_str(&format!("\n• …and {} more", many.len() - GROUP_LIST_LIMIT));
            }
            s
        }
    };
    if let Some(url) = &ctx.dashboard_url {
        out.push_str(&format!("\nDashboard: {url}"));
    }
    out
}

fn fields(n: &Notification) -> Vec<Value> {
    let mut f = Vec::new();
    let mut add = |k: &str, v: String| {
        f.push(json!({"type": "mrkdwn", "text": cut(&format!("*{k}*\n{v}"), 2000)}))
    };
    if let Some(c) = &n.container {
        add("Container", format!("`{}`", c.name));
        if !c.image.is_empty() {
            add("Image", format!("`{}`", c.image));
        }
    }
    add("Host", format!("`{}`", n.host));
    add("Severity", format!("{:?}", n.severity).to_lowercase());
    if let (Some(a), Some(o)) = (n.action, n.outcome) {
        add(
            "Action",
            format!(
                "{} → {}",
                serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                format!("{o:?}").to_lowercase()
            ),
        );
    }
    if let Some(c) = n.confidence {
        add("Confidence", format!("{:.0} %", c * 100.0));
    }
    if let Some(m) = n.method {
        add("Decided by", method(m).to_owned());
    }
    if n.dry_run {
        add("Dry run", "yes: nothing was changed".to_owned());
    }
    f.truncate(10);
    f
}

/// Slack incoming-webhook payload: Block Kit inside a coloured attachment, plain-text fallback.
pub fn slack(batch: &Batch, ctx: &RenderContext) -> Value {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let mut blocks = Vec::new();
    match batch.notifications.as_slice() {
        [n] => {
            blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": cut(&format!("{} {}", emoji(n), n.title), SLACK_HEADER_LIMIT), "emoji": true}}));
            if !n.text.is_empty() && n.text != n.title {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&n.text, SLACK_TEXT_LIMIT)}}));
            }
            if let Some(rc) = &n.root_cause {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("*Root cause*: {rc}"), SLACK_TEXT_LIMIT)}}));
            }
            blocks.push(json!({"type": "section", "fields": fields(n)}));
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("{} · {} UTC · event `{}`", status_word(n), n.at.format("%Y-%m-%d %H:%M:%S"), n.event_type)}]}));
        }
        many => {
            blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": format!("{} hemostat notifications", many.len()), "emoji": true}}));
            let list: Vec<String> = many
                .iter()
                .take(GROUP_LIST_LIMIT)
                .map(|n| format!("• {}", line(n)))
                .collect();
            let mut text = list.join("\n");
            if many.len() > GROUP_LIST_LIMIT {
                text.push_str(&format!("\n• …and {} more", many.len() - GROUP_LIST_LIMIT));
            }
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&text, SLACK_TEXT_LIMIT)}}));
            let first = many
                .first()
                .map(|n| n.at.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("grouped · first at {first} UTC")}]}));
        }
    }
    if let Some(url) = &ctx.dashboard_url {
        blocks.push(json!({"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Open dashboard"}, "url": url}]}));
    }
    json!({
        "text": cut(&plain(batch, ctx), SLACK_TEXT_LIMIT),
        "attachments": [{"color": colour(worst(batch), resolved), "blocks": blocks}],
    })
}

/// Discord webhook: `content` plus one embed.
pub fn discord(batch: &Batch, ctx: &RenderContext) -> Value {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let colour_int =
        u32::from_str_radix(colour(worst(batch), resolved).trim_start_matches('#'), 16)
            .unwrap_or(0);
    let title = match batch.notifications.as_slice() {
        [n] => n.title.clone(),
        many => format!("{} hemostat notifications", many.len()),
    };
    json!({
        "content": cut(&plain(batch, ctx), 2000),
        "embeds": [{"title": cut(&title, 256), "color": colour_int, "url": ctx.dashboard_url}],
    })
}

/// Microsoft Teams incoming webhook (MessageCard).
pub fn teams(batch: &Batch, ctx: &RenderContext) -> Value {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let title = match batch.notifications.as_slice() {
        [n] => n.title.clone(),
        many => format!("{} hemostat notifications", many.len()),
    };
    json!({
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "themeColor": colour(worst(batch), resolved).trim_start_matches('#'),
        "summary": cut(&title, 200),
        "title": cut(&title, 200),
        "text": cut(&plain(batch, ctx), 20_000).replace('\n', "<br>"),
    })
}

/// ntfy: plain-text body with title, priority and tags as headers.
pub fn ntfy(batch: &Batch, ctx: &RenderContext) -> (String, Vec<(&'static str, String)>) {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let title = match batch.notifications.as_slice() {
        [n] => n.title.clone(),
        many => format!("{} hemostat notifications", many.len()),
    };
    let (priority, tag) = match (resolved, worst(batch)) {
        (true, _) => ("3", "white_check_mark"),
        (_, Severity::Critical) => ("5", "rotating_light"),
        (_, Severity::Warning) => ("4", "warning"),
        (_, Severity::Info) => ("3", "information_source"),
    };
    // Header values must be ASCII-safe: strip anything else.
    let ascii_title: String = title
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    (
        plain(batch, ctx),
        vec![
            ("Title", cut(&ascii_title, 250)),
            ("Priority", priority.into()),
            ("Tags", format!("{tag},hemostat")),
        ],
    )
}

/// Plain JSON: the notifications as they are.
pub fn json_body(batch: &Batch) -> Value {
    json!({"source": "hemostat", "count": batch.notifications.len(), "notifications": batch.notifications})
}

/// PagerDuty Events API v2: one event per pageable notification. The dedup key is stable per
/// container, so a recovery resolves the incident its failure opened.
pub fn pagerduty(n: &Notification, routing_key: &str) -> Option<Value> {
    if !n.page {
        return None;
    }
    let who = n
        .container
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "-".into());
    let dedup = format!("hemostat/{}/{}", n.host, who);
    let event = match n.status {
        Status::Resolved => {
            json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup})
        }
        Status::Firing => json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup,
            "payload": {
                "summary": cut(&n.title, 1024),
                "source": n.host,
                "severity": match n.severity { Severity::Critical => "critical", Severity::Warning => "warning", Severity::Info => "info" },
                "component": who,
                "class": n.kind,
                "custom_details": {"detail": n.text, "root_cause": n.root_cause, "event_id": n.event_id, "dry_run": n.dry_run},
            },
        }),
    };
    Some(event)
}

/// Checks the Block Kit rules we rely on; used by the tests on every rendered payload.
pub fn check_block_kit(payload: &Value) -> Result<(), String> {
    let text = payload["text"].as_str().ok_or("no fallback text")?;
    if text.is_empty() {
        return Err("empty fallback text".into());
    }
    let blocks = payload["attachments"][0]["blocks"]
        .as_array()
        .ok_or("no blocks")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err(format!("{} blocks", blocks.len()));
    }
    for b in blocks {
        match b["type"].as_str() {
            Some("header") => {
                if b["text"]["type"] != "plain_text" {
                    return Err("header text must be plain_text".into());
                }
                let t = b["text"]["text"].as_str().unwrap_or_default();
                if t.chars().count() > SLACK_HEADER_LIMIT {
                    return Err("header too long".into());
                }
            }
            Some("section") => {
                let has_text = b["text"]["text"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty() && t.chars().count() <= SLACK_TEXT_LIMIT);
                let fields = b["fields"].as_array();
                if !has_text && fields.is_none_or(|f| f.is_empty() || f.len() > 10) {
                    return Err("section needs text or 1-10 fields".into());
                }
            }
            Some("context") => {
                if b["elements"]
                    .as_array()
                    .is_none_or(|e| e.is_empty() || e.len() > 10)
                {
                    return Err("context needs 1-10 elements".into());
                }
            }
            Some("actions") => {
                if b["elements"].as_array().is_none_or(|e| e.is_empty()) {
                    return Err("actions needs elements".into());
                }
            }
            other => return Err(format!("unexpected block type {other:?}")),
        }
    }
    Ok(())
}
