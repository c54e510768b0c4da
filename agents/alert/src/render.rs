//! Turning a batch of notifications into each sink's wire format: Slack Block Kit (with a
//! plain-text fallback), Discord, Microsoft Teams, ntfy, plain JSON and PagerDuty Events v2.
//!
//! A notification's words (its title, detail, root cause, container, image and host) quote
//! what containers said: health-check output, log lines, exit messages. Renderers read them
//! only through [`Said`], which escapes them for the sink's markup ([`crate::escape`]), so
//! none of it can mention, link or format; our own formatting goes around the escaped text.

use hemostat_common::events::{AnalysisMethod, Severity};
use serde_json::{Value, json};

use crate::engine::Batch;
use crate::escape::{Markup, escape, header_value};
use crate::notify::{Notification, Status};

/// Slack's limits: section text 3000 characters, header 150, at most 50 blocks.
const SLACK_TEXT_LIMIT: usize = 3000;
const SLACK_HEADER_LIMIT: usize = 150;
/// Notifications listed individually in one grouped message.
const GROUP_LIST_LIMIT: usize = 20;
/// ntfy's title header, in ASCII characters.
const NTFY_TITLE_LIMIT: usize = 250;

/// Context every renderer may use.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// `HEMOSTAT_DASHBOARD_URL`, linked from messages when set.
    pub dashboard_url: Option<String>,
    /// The key that signs approval links (from Redis), once read.
    pub approval_key: Option<Vec<u8>>,
}

/// The approval links of a batch's proposals: the dashboard's page for each, signed so that the
/// link alone lets a person decide (it shows the proposal; approving or declining is a button
/// on that page, never the visit itself, so a chat's link preview decides nothing).
pub fn approval_links(batch: &Batch, ctx: &RenderContext) -> Vec<(String, String)> {
    let (Some(base), Some(key)) = (&ctx.dashboard_url, &ctx.approval_key) else {
        return Vec::new();
    };
    batch
        .notifications
        .iter()
        .filter_map(|n| {
            let id = n.proposal.as_ref()?;
            let sig = hemostat_common::events::proposals::sign(key, &n.host, id);
            let who = n.container.as_ref().map_or("the host", |c| c.name.as_str());
            Some((
                format!("Approve or decline ({})", escape(who, Markup::Plain)),
                format!(
                    "{}/approve/{}/{}?sig={sig}",
                    base.trim_end_matches('/'),
                    crate::urls::encode(&n.host),
                    crate::urls::encode(id)
                ),
            ))
        })
        .take(GROUP_LIST_LIMIT)
        .collect()
}

/// What one notification says, escaped for one markup. The one place a notification's words
/// enter a message: renderers never put `title`, `text`, `root_cause`, `host` or the
/// container of a [`Notification`] in one themselves (PagerDuty's dedup key, source and
/// component alone stay raw, as its API reads them as identifiers, not as text to show).
struct Said {
    title: String,
    text: String,
    /// The text says more than the title.
    text_adds: bool,
    root_cause: Option<String>,
    host: String,
    container: Option<String>,
    image: Option<String>,
}

impl Said {
    fn new(n: &Notification, m: Markup) -> Said {
        let e = |s: &str| escape(s, m);
        Said {
            title: e(&n.title),
            text: e(&n.text),
            text_adds: !n.text.is_empty() && n.text != n.title,
            root_cause: n.root_cause.as_deref().map(e),
            host: e(&n.host),
            container: n.container.as_ref().map(|c| e(&c.name)),
            image: n
                .container
                .as_ref()
                .filter(|c| !c.image.is_empty())
                .map(|c| e(&c.image)),
        }
    }

    /// The detail, when it adds to the title.
    fn detail(&self) -> Option<&str> {
        self.text_adds.then_some(self.text.as_str())
    }
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
        AnalysisMethod::Person => "a person",
    }
}

fn status_word(n: &Notification) -> &'static str {
    match (n.status, n.outcome) {
        (Status::Resolved, _) => "RESOLVED",
        (Status::Firing, Some(_)) => "REMEDIATION",
        (Status::Firing, None) => "FIRING",
    }
}

/// One line per notification, its words escaped for `m`: used for fallbacks and grouped
/// messages.
pub fn line(n: &Notification, m: Markup) -> String {
    let said = Said::new(n, m);
    // The marker is ours: notify.rs writes it at the start of a dry run's title.
    let dry = if n.dry_run && !n.title.starts_with("[dry run]") {
        "[dry run] "
    } else {
        ""
    };
    format!(
        "{} {dry}{} — {} on {}",
        emoji(n),
        said.title,
        status_word(n),
        said.host
    )
}

/// The text version of a batch, its words escaped for `m` (Slack's fallback `text`, ntfy's
/// body, Discord's content, Teams' text).
pub fn plain(batch: &Batch, ctx: &RenderContext, m: Markup) -> String {
    let mut out = match batch.notifications.as_slice() {
        [one] => {
            let said = Said::new(one, m);
            let mut s = line(one, m);
            if let Some(detail) = said.detail() {
                s.push_str(&format!("\n{detail}"));
            }
            if let Some(rc) = &said.root_cause {
                s.push_str(&format!("\nRoot cause: {rc}"));
            }
            s
        }
        many => {
            let mut s = format!("{} hemostat notifications:", many.len());
            for n in many.iter().take(GROUP_LIST_LIMIT) {
                s.push_str(&format!("\n• {}", line(n, m)));
            }
            if many.len() > GROUP_LIST_LIMIT {
                s.push_str(&format!("\n• …and {} more", many.len() - GROUP_LIST_LIMIT));
            }
            s
        }
    };
    for (label, url) in approval_links(batch, ctx) {
        out.push_str(&format!("\n{label}: {url}"));
    }
    if batch.notifications.iter().any(|n| n.proposal.is_some()) && ctx.dashboard_url.is_none() {
        out.push_str("\nApprove or decline it in the hemostat dashboard (or set HEMOSTAT_DASHBOARD_URL for a link here).");
    }
    if let Some(url) = &ctx.dashboard_url {
        out.push_str(&format!("\nDashboard: {url}"));
    }
    out
}

/// A Slack mrkdwn object holding escaped container text: `verbatim`, so Slack does not
/// link-ify anything in it either.
fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text, "verbatim": true})
}

/// A Slack `plain_text` object: no formatting at all.
fn plain_text(text: String) -> Value {
    json!({"type": "plain_text", "text": text, "emoji": true})
}

/// The Slack fields of `n`; `said` is `n` escaped for [`Markup::Slack`].
fn fields(n: &Notification, said: &Said) -> Vec<Value> {
    let mut f = Vec::new();
    let mut add = |k: &str, v: String| f.push(mrkdwn(cut(&format!("*{k}*\n{v}"), 2000)));
    if let Some(c) = &said.container {
        add("Container", format!("`{c}`"));
        if let Some(image) = &said.image {
            add("Image", format!("`{image}`"));
        }
    }
    add("Host", format!("`{}`", said.host));
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

/// Slack incoming-webhook payload: Block Kit inside a coloured attachment, and a fallback
/// `text`. Container text goes into `plain_text` objects where it stands alone (the header,
/// the detail, the grouped list) and, escaped for mrkdwn, into `verbatim` mrkdwn objects
/// where it follows one of our bold labels (root cause, fields) and into the fallback.
pub fn slack(batch: &Batch, ctx: &RenderContext) -> Value {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let mut blocks = Vec::new();
    match batch.notifications.as_slice() {
        [n] => {
            let shown = Said::new(n, Markup::SlackPlainText);
            let marked = Said::new(n, Markup::Slack);
            blocks.push(json!({"type": "header", "text": plain_text(cut(&format!("{} {}", emoji(n), shown.title), SLACK_HEADER_LIMIT))}));
            if let Some(detail) = shown.detail() {
                blocks.push(
                    json!({"type": "section", "text": plain_text(cut(detail, SLACK_TEXT_LIMIT))}),
                );
            }
            if let Some(rc) = &marked.root_cause {
                blocks.push(json!({"type": "section", "text": mrkdwn(cut(&format!("*Root cause*: {rc}"), SLACK_TEXT_LIMIT))}));
            }
            blocks.push(json!({"type": "section", "fields": fields(n, &marked)}));
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("{} · {} UTC · event `{}`", status_word(n), n.at.format("%Y-%m-%d %H:%M:%S"), n.event_type)}]}));
        }
        many => {
            blocks.push(json!({"type": "header", "text": plain_text(format!("{} hemostat notifications", many.len()))}));
            let list: Vec<String> = many
                .iter()
                .take(GROUP_LIST_LIMIT)
                .map(|n| format!("• {}", line(n, Markup::SlackPlainText)))
                .collect();
            let mut text = list.join("\n");
            if many.len() > GROUP_LIST_LIMIT {
                text.push_str(&format!("\n• …and {} more", many.len() - GROUP_LIST_LIMIT));
            }
            blocks
                .push(json!({"type": "section", "text": plain_text(cut(&text, SLACK_TEXT_LIMIT))}));
            let first = many
                .first()
                .map(|n| n.at.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("grouped · first at {first} UTC")}]}));
        }
    }
    let mut buttons: Vec<Value> = approval_links(batch, ctx)
        .into_iter()
        .take(4)
        .map(|(label, url)| json!({"type": "button", "style": "primary", "text": {"type": "plain_text", "text": cut(&label, 75)}, "url": url}))
        .collect();
    if let Some(url) = &ctx.dashboard_url {
        buttons.push(json!({"type": "button", "text": {"type": "plain_text", "text": "Open dashboard"}, "url": url}));
    }
    if !buttons.is_empty() {
        blocks.push(json!({"type": "actions", "elements": buttons}));
    }
    json!({
        "text": cut(&plain(batch, ctx, Markup::Slack), SLACK_TEXT_LIMIT),
        "attachments": [{"color": colour(worst(batch), resolved), "blocks": blocks}],
        // No preview of any link: container links are broken anyway, and the dashboard's
        // button needs none.
        "unfurl_links": false,
        "unfurl_media": false,
    })
}

/// Discord webhook: `content` plus one embed. `allowed_mentions` with an empty `parse` list
/// means no mention in it notifies anyone, whatever the text says.
pub fn discord(batch: &Batch, ctx: &RenderContext) -> Value {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let colour_int =
        u32::from_str_radix(colour(worst(batch), resolved).trim_start_matches('#'), 16)
            .unwrap_or(0);
    let title = match batch.notifications.as_slice() {
        [n] => Said::new(n, Markup::Discord).title,
        many => format!("{} hemostat notifications", many.len()),
    };
    json!({
        "content": cut(&plain(batch, ctx, Markup::Discord), 2000),
        "embeds": [{"title": cut(&title, 256), "color": colour_int, "url": ctx.dashboard_url}],
        "allowed_mentions": {"parse": []},
    })
}

/// Microsoft Teams incoming webhook (MessageCard). The title and text render markdown and
/// some HTML, so their container text is escaped for both; the summary (what notifications
/// show) is plain text.
pub fn teams(batch: &Batch, ctx: &RenderContext) -> Value {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let (summary, title) = match batch.notifications.as_slice() {
        [n] => (
            Said::new(n, Markup::Plain).title,
            Said::new(n, Markup::Teams).title,
        ),
        many => {
            let t = format!("{} hemostat notifications", many.len());
            (t.clone(), t)
        }
    };
    json!({
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "themeColor": colour(worst(batch), resolved).trim_start_matches('#'),
        "summary": cut(&summary, 200),
        "title": cut(&title, 200),
        // Newlines become our own `<br>` after escaping, so only ours are tags.
        "text": cut(&plain(batch, ctx, Markup::Teams), 20_000).replace('\n', "<br>"),
    })
}

/// ntfy: a plain-text body (no `Markdown` header, so ntfy shows it as it is) with title,
/// priority and tags as headers. The title header is one bounded line of ASCII, so no text
/// can end it and add a header of its own.
pub fn ntfy(batch: &Batch, ctx: &RenderContext) -> (String, Vec<(&'static str, String)>) {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let title = match batch.notifications.as_slice() {
        [n] => Said::new(n, Markup::Plain).title,
        many => format!("{} hemostat notifications", many.len()),
    };
    let (priority, tag) = match (resolved, worst(batch)) {
        (true, _) => ("3", "white_check_mark"),
        (_, Severity::Critical) => ("5", "rotating_light"),
        (_, Severity::Warning) => ("4", "warning"),
        (_, Severity::Info) => ("3", "information_source"),
    };
    (
        plain(batch, ctx, Markup::Plain),
        vec![
            ("Title", header_value(&title, NTFY_TITLE_LIMIT)),
            ("Priority", priority.into()),
            ("Tags", format!("{tag},hemostat")),
        ],
    )
}

/// Plain JSON: the notifications as they are. Their text is raw: serde writes each as one
/// JSON string, and a notification's fields are fixed (nothing is flattened in), so container
/// text can never add a field of its own.
pub fn json_body(batch: &Batch) -> Value {
    json!({"source": "hemostat", "count": batch.notifications.len(), "notifications": batch.notifications})
}

/// What a pager keys an alert by, for a pageable notification: the container's name (`-` for
/// the host) and `hemostat/<host>/<container>`, the same for its failure and its recovery.
fn pager_key(n: &Notification) -> Option<(String, String)> {
    if !n.page {
        return None;
    }
    let who = n
        .container
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "-".into());
    let key = format!("hemostat/{}/{}", n.host, who);
    Some((who, key))
}

/// PagerDuty Events API v2: one event per pageable notification. The dedup key is stable per
/// container, so a recovery resolves the incident its failure opened.
pub fn pagerduty(n: &Notification, routing_key: &str) -> Option<Value> {
    let (who, dedup) = pager_key(n)?;
    let said = Said::new(n, Markup::Plain);
    let event = match n.status {
        Status::Resolved => {
            json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup})
        }
        Status::Firing => json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup,
            "payload": {
                "summary": cut(&said.title, 1024),
                "source": n.host,
                "severity": match n.severity { Severity::Critical => "critical", Severity::Warning => "warning", Severity::Info => "info" },
                "component": who,
                "class": n.kind,
                "custom_details": {"detail": said.text, "root_cause": said.root_cause, "event_id": n.event_id, "dry_run": n.dry_run},
            },
        }),
    };
    Some(event)
}

/// Gotify: title, message and a priority (Gotify's clients alert loudly from 8, quietly at 2),
/// shown as plain text.
pub fn gotify(batch: &Batch, ctx: &RenderContext) -> Value {
    let (title, priority) = titled(batch);
    json!({
        "title": cut(&title, 250),
        "message": plain(batch, ctx, Markup::Plain),
        "priority": match priority { Severity::Critical => 8, Severity::Warning => 5, Severity::Info => 2 },
        "extras": {"client::display": {"contentType": "text/plain"}},
    })
}

/// The title of a batch (one notification's own, or a count) and how loud it should be
/// (a batch of recoveries is quiet).
fn titled(batch: &Batch) -> (String, Severity) {
    let resolved = batch
        .notifications
        .iter()
        .all(|n| n.status == Status::Resolved);
    let title = match batch.notifications.as_slice() {
        [n] => Said::new(n, Markup::Plain).title,
        many => format!("{} hemostat notifications", many.len()),
    };
    (
        title,
        if resolved {
            Severity::Info
        } else {
            worst(batch)
        },
    )
}

/// Telegram Bot API `sendMessage`: HTML (its container text escaped for it), no link
/// previews. Telegram's limit is 4096 characters.
pub fn telegram(batch: &Batch, ctx: &RenderContext, chat: &str) -> Value {
    let (title, _) = titled(batch);
    let body = plain(batch, ctx, Markup::Html);
    let text = format!("<b>{}</b>\n{body}", escape(&title, Markup::Html));
    json!({
        "chat_id": chat,
        "text": cut(&text, 4000),
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": true},
    })
}

/// Pushover: a form with the application token, the user key, title, message, priority
/// (-1 quiet, 0 normal, 1 high) and the dashboard as its supplementary URL. Its limits are
/// 250 characters of title and 1024 of message.
pub fn pushover(
    batch: &Batch,
    ctx: &RenderContext,
    token: &str,
    user: &str,
    devices: &[String],
) -> String {
    let (title, loud) = titled(batch);
    let priority = match loud {
        Severity::Critical => "1",
        Severity::Warning => "0",
        Severity::Info => "-1",
    };
    let mut fields = vec![
        ("token", token.to_owned()),
        ("user", user.to_owned()),
        ("title", cut(&title, 250)),
        ("message", cut(&plain(batch, ctx, Markup::Plain), 1024)),
        ("priority", priority.to_owned()),
    ];
    if !devices.is_empty() {
        fields.push(("device", devices.join(",")));
    }
    if let Some(url) = &ctx.dashboard_url {
        fields.push(("url", url.clone()));
        fields.push(("url_title", "hemostat dashboard".to_owned()));
    }
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::urls::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Matrix `m.room.message`: the plain text as `body`, and HTML (escaped, our own `<br>` and
/// `<b>`) as `formatted_body`. `m.notice`: a bot's message, which clients do not answer.
pub fn matrix(batch: &Batch, ctx: &RenderContext) -> Value {
    let (title, _) = titled(batch);
    let html = format!(
        "<b>{}</b><br>{}",
        escape(&title, Markup::Html),
        plain(batch, ctx, Markup::Html).replace('\n', "<br>")
    );
    json!({
        "msgtype": "m.notice",
        "body": plain(batch, ctx, Markup::Plain),
        "format": "org.matrix.custom.html",
        "formatted_body": html,
    })
}

/// Opsgenie Alert API: a pageable notification opens an alert (`alias` is the container, so
/// repeated failures fold into one alert and a recovery closes it); a recovery closes it.
/// Returns the alias to close, if it closes one, and the body.
pub fn opsgenie(n: &Notification) -> Option<(Option<String>, Value)> {
    let (who, alias) = pager_key(n)?;
    let alias = cut(&alias, 512);
    let said = Said::new(n, Markup::Plain);
    Some(match n.status {
        Status::Resolved => (
            Some(alias),
            json!({"source": "hemostat", "note": cut(&said.title, 1000)}),
        ),
        Status::Firing => (
            None,
            json!({
                "message": cut(&said.title, 130),
                "alias": alias,
                "description": cut(&said.text, 15_000),
                "priority": match n.severity { Severity::Critical => "P1", Severity::Warning => "P3", Severity::Info => "P5" },
                "source": "hemostat",
                "entity": cut(&who, 512),
                "tags": ["hemostat", n.kind.as_str()],
                "details": {"host": cut(&n.host, 1000), "root_cause": said.root_cause.as_deref().map(|r| cut(r, 1000)), "event_id": n.event_id.as_str(), "dry_run": n.dry_run.to_string()},
            }),
        ),
    })
}

/// Email: a subject line (one line, bounded) and a plain-text body.
pub fn email(batch: &Batch, ctx: &RenderContext) -> (String, String) {
    let (title, _) = titled(batch);
    (
        header_value(&format!("[hemostat] {title}"), 200),
        plain(batch, ctx, Markup::Plain),
    )
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use chrono::{TimeZone, Utc};
    use hemostat_common::events::ContainerRef;

    /// What a hostile container can make its health check print or its logs say.
    const HOSTILE: &str = "<!channel> see <http://evil.example|docs> *bold* @everyone @here <@U123> <@&42> [x](http://evil.example) `code` # h\n> quote ~strike~ _it_ ||spoiler|| <b>html</b>";

    #[test]
    fn a_proposal_links_to_its_signed_decision_page() {
        let mut p = n("Approve restart of web?", "It passed every guard.", None);
        p.proposal = Some("01JREQ".into());
        p.host = "docker-01".into();
        let batch = Batch {
            notifications: vec![p],
        };
        let key = b"k3y".to_vec();
        let ctx = RenderContext {
            dashboard_url: Some("https://hemostat.example/".into()),
            approval_key: Some(key.clone()),
        };
        let sig = hemostat_common::events::proposals::sign(&key, "docker-01", "01JREQ");
        let want = format!("https://hemostat.example/approve/docker-01/01JREQ?sig={sig}");
        let slack = slack(&batch, &ctx);
        check_block_kit(&slack).unwrap();
        let buttons = slack["attachments"][0]["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "actions")
            .unwrap()["elements"]
            .clone();
        assert_eq!(buttons[0]["url"], want.as_str(), "{buttons:#}");
        assert!(plain(&batch, &ctx, Markup::Plain).contains(&want));
        assert!(hemostat_common::events::proposals::verify(
            &key,
            "docker-01",
            "01JREQ",
            &sig
        ));
        assert!(!hemostat_common::events::proposals::verify(
            &key,
            "docker-01",
            "01JOTHER",
            &sig
        ));
        assert!(!hemostat_common::events::proposals::verify(
            b"other",
            "docker-01",
            "01JREQ",
            &sig
        ));
        // Without the dashboard's address the message says where to decide instead.
        let bare = RenderContext::default();
        assert!(
            plain(&batch, &bare, Markup::Plain)
                .contains("Approve or decline it in the hemostat dashboard")
        );
    }

    fn n(title: &str, text: &str, root_cause: Option<&str>) -> Notification {
        Notification {
            fingerprint: "docker-01/api/false_alarm".into(),
            status: Status::Firing,
            severity: Severity::Warning,
            host: "docker-01".into(),
            container: Some(ContainerRef {
                id: "id".into(),
                name: "api_1".into(),
                image: "example/api:1.4".into(),
                ..ContainerRef::default()
            }),
            kind: "false_alarm".into(),
            title: title.into(),
            text: text.into(),
            root_cause: root_cause.map(str::to_owned),
            action: None,
            outcome: None,
            confidence: Some(0.8),
            method: Some(AnalysisMethod::Llm),
            dry_run: false,
            at: Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap(),
            event_id: "01H".into(),
            event_type: "false_alarm".into(),
            page: true,
            one_off: false,
            proposal: None,
        }
    }

    fn hostile() -> Batch {
        Batch {
            notifications: vec![n(
                &format!("No action for api_1: the health check prints {HOSTILE}"),
                &format!("log line: {HOSTILE}"),
                Some(&format!("the log says {HOSTILE}")),
            )],
        }
    }

    fn ordinary() -> Batch {
        Batch {
            notifications: vec![n(
                "Container api_1 was killed (exit code 137)",
                "health check: GET /healthz 200",
                Some("exit code 137 after 3 failed checks"),
            )],
        }
    }

    /// Every string in `v`, with where it is.
    fn strings(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) => out.push((at.to_owned(), s.clone())),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| strings(x, &format!("{at}[{i}]"), out)),
            Value::Object(o) => o
                .iter()
                .for_each(|(k, x)| strings(x, &format!("{at}.{k}"), out)),
            _ => {}
        }
    }

    /// Fails naming the string of `v` that contains any of `bad`.
    #[track_caller]
    fn none_contain(v: &Value, bad: &[&str]) {
        let mut all = Vec::new();
        strings(v, "", &mut all);
        for (at, s) in &all {
            for b in bad {
                assert!(!s.contains(b), "{at} contains {b:?}: {s:?}");
            }
        }
    }

    /// Live mentions and links, as Slack and Teams would read them.
    const LIVE: &[&str] = &[
        "<!",
        "<@",
        "<http",
        "](http",
        "http://",
        "@everyone",
        "@here",
    ];

    #[test]
    fn slack_shows_container_text_and_parses_none_of_it() {
        let ctx = RenderContext::default();
        let p = slack(&hostile(), &ctx);
        check_block_kit(&p).unwrap();
        none_contain(&p, LIVE);
        // mrkdwn (the fallback and the objects after our labels) formats nothing of it;
        // `plain_text` objects format nothing anyway.
        let mut marked = vec![p["text"].clone()];
        let blocks = p["attachments"][0]["blocks"].as_array().unwrap();
        for b in blocks {
            let mut texts = vec![&b["text"]];
            texts.extend(b["fields"].as_array().into_iter().flatten());
            for t in texts {
                if t["type"] == "mrkdwn" {
                    // Container text in mrkdwn is always verbatim (no link-ifying).
                    assert_eq!(t["verbatim"], true, "{t}");
                    marked.push(t["text"].clone());
                }
            }
        }
        assert!(marked.len() > 2, "{p:#}");
        none_contain(
            &Value::Array(marked),
            &["*bold*", "`code`", "_it_", "~strike~", "\n&gt;"],
        );
        // Our own formatting still works: the bold labels and the code-quoted name.
        let s = p.to_string();
        assert!(
            s.contains("*Root cause*: the log says &lt;!channel&gt;"),
            "{s}"
        );
        assert!(s.contains("*Container*\\n`api_1`"), "{s}");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[1]["text"]["type"], "plain_text");
        assert_eq!(p["unfurl_links"], false);
    }

    #[test]
    fn discord_escapes_markdown_and_allows_no_mention() {
        let p = discord(&hostile(), &RenderContext::default());
        assert_eq!(p["allowed_mentions"], json!({"parse": []}));
        // `<` always has its backslash (below), so only these are left to look for.
        none_contain(&p, &["](http", "http://", "@everyone", "@here"]);
        for field in [&p["content"], &p["embeds"][0]["title"]] {
            let s = field.as_str().unwrap();
            // Every markdown character from the container has its backslash.
            let chars: Vec<char> = s.chars().collect();
            for (i, c) in chars.iter().enumerate() {
                if matches!(
                    c,
                    '*' | '_' | '~' | '`' | '|' | '<' | '>' | '[' | ']' | '(' | ')' | '#'
                ) {
                    let slashes = chars[..i].iter().rev().take_while(|c| **c == '\\').count();
                    assert!(slashes % 2 == 1, "unescaped {c:?} at {i} in {s:?}");
                }
            }
        }
    }

    #[test]
    fn teams_escapes_markdown_and_html() {
        let mut p = teams(&hostile(), &RenderContext::default());
        // The notification summary is plain text: Teams shows it as it is.
        let summary = p["summary"].take();
        assert!(
            summary
                .as_str()
                .is_some_and(|s| s.contains("prints <!channel> see")),
            "{summary}"
        );
        none_contain(&p, LIVE);
        none_contain(&p, &["<b>", "*", "`", "[x]", "_it_", "~strike~"]);
        let text = p["text"].as_str().unwrap();
        // The only tags are our line breaks.
        assert_eq!(
            text.matches('<').count(),
            text.matches("<br>").count(),
            "{text}"
        );
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
    }

    #[test]
    fn ntfy_body_is_plain_and_title_header_cannot_be_broken() {
        let (body, headers) = ntfy(&hostile(), &RenderContext::default());
        // ntfy shows the body as text (no Markdown header), so it is left as it is.
        assert!(body.contains(HOSTILE), "{body}");
        assert!(
            !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("markdown"))
        );
        let mut b = hostile();
        b.notifications[0].title =
            format!("api\r\nClick: http://evil.example\n{}", "x".repeat(400));
        let (_, headers) = ntfy(&b, &RenderContext::default());
        let title = &headers.iter().find(|(k, _)| *k == "Title").unwrap().1;
        assert!(!title.contains(['\r', '\n']), "{title:?}");
        assert!(
            title.len() <= NTFY_TITLE_LIMIT && title.is_ascii(),
            "{title:?}"
        );
        assert!(reqwest::header::HeaderValue::from_str(title).is_ok());
    }

    #[test]
    fn json_webhook_keeps_container_text_inside_its_strings() {
        let mut b = hostile();
        b.notifications[0].text = r#"x", "page": false, "injected": "1"#.into();
        let body = json_body(&b).to_string();
        let v: Value = serde_json::from_str(&body).unwrap();
        let got = &v["notifications"][0];
        assert_eq!(got["text"], b.notifications[0].text.as_str());
        assert_eq!(got["page"], true);
        assert!(got.get("injected").is_none());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["count", "notifications", "source"]);
    }

    #[test]
    fn ordinary_text_stays_readable_everywhere() {
        let b = ordinary();
        let ctx = RenderContext::default();
        let want = ["GET /healthz 200", "exit code 137"];
        let s = slack(&b, &ctx).to_string();
        let d = discord(&b, &ctx)["content"].as_str().unwrap().to_owned();
        let t = teams(&b, &ctx)["text"].as_str().unwrap().to_owned();
        let (body, _) = ntfy(&b, &ctx);
        for rendered in [&s, &d, &t, &body] {
            for w in want {
                assert!(rendered.contains(w), "{w:?} not in {rendered}");
            }
        }
        // A name with underscores stays copyable in Slack and ntfy.
        assert!(s.contains("`api_1`") && body.contains("api_1"), "{s}");
    }
}
