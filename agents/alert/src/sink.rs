//! Delivering to one sink: its own queue and worker (a slow or dead sink never blocks the
//! others), a rate limit, a request timeout, retries with exponential backoff that honour
//! `Retry-After` on 429, and a dead letter when the retry budget is spent.
//!
//! Sink URLs and keys are secrets: they are never logged, never put in events, and reqwest's
//! errors are stripped of the URL before anything prints them.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hemostat_common::events::Severity;
use reqwest::StatusCode;
use serde_json::Value;

use crate::engine::Batch;
use crate::render::{self, RenderContext};

/// The flavours of generic webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// `{"source":"hemostat","notifications":[...]}`
    Json,
    /// Discord: `content` + an embed.
    Discord,
    /// Microsoft Teams incoming webhook (MessageCard).
    Teams,
    /// ntfy: plain text, Title/Priority/Tags headers.
    Ntfy,
}

/// How an email sink talks to its SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailTls {
    /// STARTTLS, required (port 587): the default.
    StartTls,
    /// TLS from the first byte (port 465, `smtps://`).
    Implicit,
    /// No TLS at all (`?tls=none`): only for a relay on a trusted network.
    None,
}

/// An email sink's server and addresses.
#[derive(Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub tls: EmailTls,
    pub user: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

/// What kind of sink, with its secret.
#[derive(Clone)]
pub enum Kind {
    Slack {
        url: String,
    },
    /// A webhook of one of the [`Preset`] shapes, with headers of its own (auth).
    Webhook {
        url: String,
        preset: Preset,
        headers: Vec<(String, String)>,
    },
    PagerDuty {
        url: String,
        routing_key: String,
    },
    /// Gotify's `POST /message`, the application token in `X-Gotify-Key`.
    Gotify {
        url: String,
        token: String,
    },
    /// Telegram Bot API `sendMessage` to one chat.
    Telegram {
        url: String,
        chat: String,
    },
    /// Pushover's `POST /1/messages.json`.
    Pushover {
        url: String,
        token: String,
        user: String,
        devices: Vec<String>,
    },
    /// Matrix client-server API: `PUT /rooms/<room>/send/m.room.message/<txn>`.
    Matrix {
        base: String,
        token: String,
        room: String,
    },
    /// Opsgenie Alert API: one alert per pageable notification, closed on recovery.
    Opsgenie {
        base: String,
        key: String,
    },
    Email(Box<Email>),
}

impl Kind {
    /// The service's name (metric labels, task names, `hemostat-alert test`).
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Slack { .. } => "slack",
            Kind::Webhook { preset, .. } => match preset {
                Preset::Json => "json",
                Preset::Discord => "discord",
                Preset::Teams => "teams",
                Preset::Ntfy => "ntfy",
            },
            Kind::PagerDuty { .. } => "pagerduty",
            Kind::Gotify { .. } => "gotify",
            Kind::Telegram { .. } => "telegram",
            Kind::Pushover { .. } => "pushover",
            Kind::Matrix { .. } => "matrix",
            Kind::Opsgenie { .. } => "opsgenie",
            Kind::Email(_) => "email",
        }
    }

    /// A pager: one alert per pageable notification, opened on failure and closed on
    /// recovery (PagerDuty, Opsgenie). Each delivery holds one notification, so a retry never
    /// repeats another's page.
    pub fn pager(&self) -> bool {
        matches!(self, Kind::PagerDuty { .. } | Kind::Opsgenie { .. })
    }
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL, a token or a key.
        match self {
            Kind::Webhook { preset, .. } => write!(f, "Webhook({preset:?})"),
            Kind::Email(e) => write!(f, "Email({} recipient(s))", e.to.len()),
            other => f.write_str(other.label()),
        }
    }
}

/// Delivery settings shared by every sink.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub timeout: Duration,
    /// Attempts in all (the first one included).
    pub attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub per_minute: u32,
}

/// One configured sink.
pub struct Sink {
    pub name: String,
    pub kind: Kind,
    pub min_severity: Severity,
    /// The route whose notifications it takes.
    pub route: String,
    client: reqwest::Client,
    mailer: Option<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
    limiter: DefaultDirectRateLimiter,
    delivery: Delivery,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("min_severity", &self.min_severity)
            .field("route", &self.route)
            .finish()
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    Sent {
        attempts: u32,
        status: u16,
    },
    /// Nothing to send for this sink (below its severity, or not pageable).
    NotForThisSink,
    Failed {
        attempts: u32,
        reason: String,
    },
}

/// The HTTP method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    /// Matrix sends with `PUT` to a transaction id, so a retried send is not a second one.
    Put,
}

/// One request: its body and headers, and where it goes when that is not the sink's URL. An
/// email sink's "request" is the message: the body is its text and the `Subject` header its
/// subject.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The full URL when it is not the sink's own (Opsgenie's close, Matrix's transaction).
    pub url: Option<String>,
    pub body: Vec<u8>,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL and the headers hold secrets.
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("bytes", &self.body.len())
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

impl Request {
    fn post(body: Vec<u8>, content_type: &str) -> Request {
        Request {
            method: Method::Post,
            url: None,
            body,
            content_type: content_type.to_owned(),
            headers: Vec::new(),
        }
    }

    fn json(v: &Value) -> Request {
        Request::post(v.to_string().into_bytes(), "application/json")
    }

    fn header(mut self, k: &str, v: String) -> Request {
        self.headers.push((k.to_owned(), v));
        self
    }
}

impl Sink {
    pub fn new(
        name: &str,
        kind: Kind,
        min_severity: Severity,
        route: &str,
        delivery: Delivery,
    ) -> anyhow::Result<Sink> {
        let client = reqwest::Client::builder()
            .timeout(delivery.timeout)
            .connect_timeout(delivery.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("hemostat-alert/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let rate = NonZeroU32::new(delivery.per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let mailer = match &kind {
            Kind::Email(e) => Some(crate::mail::transport(e, delivery.timeout)?),
            _ => None,
        };
        Ok(Sink {
            name: name.to_owned(),
            kind,
            min_severity,
            route: route.to_owned(),
            client,
            mailer,
            limiter: RateLimiter::direct(Quota::per_minute(rate)),
            delivery,
        })
    }

    /// Where its requests go unless a request says otherwise.
    fn url(&self) -> String {
        match &self.kind {
            Kind::Slack { url }
            | Kind::Webhook { url, .. }
            | Kind::PagerDuty { url, .. }
            | Kind::Gotify { url, .. }
            | Kind::Telegram { url, .. }
            | Kind::Pushover { url, .. } => url.clone(),
            Kind::Matrix { base, .. } => base.clone(),
            Kind::Opsgenie { base, .. } => format!("{base}/v2/alerts"),
            Kind::Email(_) => String::new(),
        }
    }

    /// The notifications of `batch` this sink takes: at or above its severity (recoveries
    /// always), and for PagerDuty only the pageable ones.
    pub fn accepts(&self, n: &crate::notify::Notification) -> bool {
        let severity_ok =
            n.severity >= self.min_severity || n.status == crate::notify::Status::Resolved;
        if self.kind.pager() {
            severity_ok && n.page
        } else {
            severity_ok
        }
    }

    /// The requests this sink makes for `batch` (after its filters).
    pub fn requests(&self, batch: &Batch, ctx: &RenderContext) -> Vec<Request> {
        let kept: Vec<_> = batch
            .notifications
            .iter()
            .filter(|n| self.accepts(n))
            .cloned()
            .collect();
        if kept.is_empty() {
            return Vec::new();
        }
        let batch = Batch {
            notifications: kept,
        };
        let json = |v: Value| Request::json(&v);
        match &self.kind {
            Kind::Slack { .. } => vec![json(render::slack(&batch, ctx))],
            Kind::Webhook {
                preset, headers, ..
            } => {
                let mut r = match preset {
                    Preset::Json => json(render::json_body(&batch)),
                    Preset::Discord => json(render::discord(&batch, ctx)),
                    Preset::Teams => json(render::teams(&batch, ctx)),
                    Preset::Ntfy => {
                        let (body, hs) = render::ntfy(&batch, ctx);
                        let mut r = Request::post(body.into_bytes(), "text/plain; charset=utf-8");
                        for (k, v) in hs {
                            r = r.header(k, v);
                        }
                        r
                    }
                };
                r.headers.extend(headers.iter().cloned());
                vec![r]
            }
            Kind::PagerDuty { routing_key, .. } => batch
                .notifications
                .iter()
                .filter_map(|n| render::pagerduty(n, routing_key))
                .map(json)
                .collect(),
            Kind::Gotify { token, .. } => {
                vec![json(render::gotify(&batch, ctx)).header("X-Gotify-Key", token.clone())]
            }
            Kind::Telegram { chat, .. } => vec![json(render::telegram(&batch, ctx, chat))],
            Kind::Pushover {
                token,
                user,
                devices,
                ..
            } => {
                let form = render::pushover(&batch, ctx, token, user, devices);
                vec![Request::post(
                    form.into_bytes(),
                    "application/x-www-form-urlencoded",
                )]
            }
            Kind::Matrix { base, token, room } => {
                let txn = transaction_id(&self.name, &batch);
                let mut r = json(render::matrix(&batch, ctx));
                r.method = Method::Put;
                r.url = Some(format!(
                    "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    crate::urls::encode(room)
                ));
                vec![r.header("Authorization", format!("Bearer {token}"))]
            }
            Kind::Opsgenie { base, key } => batch
                .notifications
                .iter()
                .filter_map(|n| {
                    let (close, body) = render::opsgenie(n)?;
                    let mut r = json(body).header("Authorization", format!("GenieKey {key}"));
                    if let Some(alias) = close {
                        r.url = Some(format!(
                            "{base}/v2/alerts/{}/close?identifierType=alias",
                            crate::urls::encode(&alias)
                        ));
                    }
                    Some(r)
                })
                .collect(),
            Kind::Email(_) => {
                let (subject, text) = render::email(&batch, ctx);
                vec![
                    Request::post(text.into_bytes(), "text/plain; charset=utf-8")
                        .header("Subject", subject)
                        .header(
                            "Message-ID",
                            format!("<{}@hemostat>", transaction_id(&self.name, &batch)),
                        ),
                ]
            }
        }
    }

    /// Delivers `batch` now, every request of it, each with the retry budget, waiting between
    /// attempts: for one-off use (`hemostat-alert test`). The service itself makes one
    /// [`Sink::attempt`] at a time and keeps the retry schedule in Redis.
    pub async fn deliver(&self, batch: &Batch, ctx: &RenderContext) -> Delivered {
        let requests = self.requests(batch, ctx);
        if requests.is_empty() {
            return Delivered::NotForThisSink;
        }
        let mut last = Delivered::NotForThisSink;
        for r in requests {
            let mut delay = self.delivery.backoff_initial;
            last = Delivered::Failed {
                attempts: 0,
                reason: String::new(),
            };
            for attempt in 1..=self.delivery.attempts.max(1) {
                self.limiter.until_ready().await;
                match self.attempt(&r).await {
                    Attempt::Sent { status } => {
                        last = Delivered::Sent {
                            attempts: attempt,
                            status,
                        };
                        break;
                    }
                    Attempt::Fatal { reason } => {
                        return Delivered::Failed {
                            attempts: attempt,
                            reason,
                        };
                    }
                    Attempt::Retry { reason, after } => {
                        last = Delivered::Failed {
                            attempts: attempt,
                            reason,
                        };
                        if attempt < self.delivery.attempts {
                            tokio::time::sleep(after.unwrap_or(delay)).await;
                            delay = self.next_backoff(delay);
                        }
                    }
                }
            }
            if matches!(last, Delivered::Failed { .. }) {
                return last;
            }
        }
        last
    }

    /// The delay after `delay` in the retry schedule.
    pub fn next_backoff(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.delivery.backoff_max)
    }

    /// The delivery settings.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// When this sink's rate limit allows the next request: `None` now, else how long to wait.
    pub fn rate_wait(&self) -> Option<Duration> {
        match self.limiter.check() {
            Ok(()) => None,
            Err(not_until) => Some(
                not_until
                    .wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ))
                    .max(Duration::from_millis(10)),
            ),
        }
    }

    /// Makes one request, once.
    pub async fn attempt(&self, r: &Request) -> Attempt {
        if let (Kind::Email(e), Some(mailer)) = (&self.kind, &self.mailer) {
            return crate::mail::send(&self.name, mailer, e, r).await;
        }
        let url = r.url.clone().unwrap_or_else(|| self.url());
        let req = match r.method {
            Method::Post => self.client.post(url),
            Method::Put => self.client.put(url),
        };
        let mut req = req
            .header(reqwest::header::CONTENT_TYPE, r.content_type.as_str())
            .body(r.body.clone());
        for (k, v) in &r.headers {
            req = req.header(k.as_str(), v);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Attempt::Sent {
                status: resp.status().as_u16(),
            },
            Ok(resp) => {
                let status = resp.status();
                let reason = format!("{} answered {status}", self.name);
                if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE
                {
                    // The server's own wait, but never longer than ours.
                    Attempt::Retry {
                        reason,
                        after: retry_after(&resp, chrono::Utc::now())
                            .map(|d| d.min(self.delivery.backoff_max)),
                    }
                } else if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT {
                    // Other 4xx will not get better by retrying (bad URL, bad key).
                    Attempt::Fatal { reason }
                } else {
                    Attempt::Retry {
                        reason,
                        after: None,
                    }
                }
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "unreachable"
                } else {
                    "request failed"
                };
                // `without_url`: the URL is the secret.
                Attempt::Retry {
                    reason: format!("{} {kind}: {}", self.name, e.without_url()),
                    after: None,
                }
            }
        }
    }
}

/// How one request went.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Sent {
        status: u16,
    },
    /// Worth trying again: a 5xx, a 429 (after `after`, from its `Retry-After`), a timeout.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Will not get better: a 4xx other than 429.
    Fatal {
        reason: String,
    },
}

/// A stable id for the delivery of `batch` by sink `name`: the same on every retry, so a
/// service that dedupes by it (Matrix's transaction id, an email's Message-ID) shows it once.
pub fn transaction_id(name: &str, batch: &Batch) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    for n in &batch.notifications {
        h.update(b"\0");
        h.update(n.event_id.as_bytes());
        h.update(n.fingerprint.as_bytes());
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A 429's `Retry-After`: seconds, or an HTTP date; never a panic, whatever the header says
/// (the caller clamps it to its longest backoff).
fn retry_after(resp: &reqwest::Response, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(v, now)
}

/// Parses a `Retry-After` value: delay-seconds (fractions accepted, negatives and non-finite
/// values refused, huge ones saturated) or an HTTP date (RFC 7231, e.g. `Wed, 21 Oct 2015
/// 07:28:00 GMT`; a date in the past is zero).
pub fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        // `from_secs_f64` panics past u64::MAX seconds; `try_` does not.
        return Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - now;
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn retry_after_never_panics_and_reads_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let cases: &[(&str, Option<Duration>)] = &[
            ("3", Some(Duration::from_secs(3))),
            ("0.5", Some(Duration::from_millis(500))),
            ("1e20", Some(Duration::MAX)),
            ("-1", None),
            ("NaN", None),
            ("inf", None),
            ("soon", None),
            (
                "Wed, 21 Oct 2015 07:28:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Wed, 21 Oct 2015 07:00:00 GMT", Some(Duration::ZERO)),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_retry_after(raw, now), *want, "{raw}");
        }
    }
}
