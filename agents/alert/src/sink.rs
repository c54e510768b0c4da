//! Delivering to one sink: its own queue and worker (a slow or dead sink never blocks the
//! others), a rate limit, a request timeout, retries with exponential backoff that honour
//! `Retry-After` on 429, and a dead letter when the retry budget is spent.
//!
//! Sink URLs and keys are secrets: they are never logged, never put in events, and reqwest's
//! errors are stripped of the URL before anything prints them.

use std::num::NonZeroU32;
use std::sync::Arc;
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

/// What kind of sink, with its secret.
#[derive(Clone)]
pub enum Kind {
    Slack { url: String },
    Webhook { url: String, preset: Preset },
    PagerDuty { url: String, routing_key: String },
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL or the key.
        match self {
            Kind::Slack { .. } => f.write_str("Slack"),
            Kind::Webhook { preset, .. } => write!(f, "Webhook({preset:?})"),
            Kind::PagerDuty { .. } => f.write_str("PagerDuty"),
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
    client: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    delivery: Delivery,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("min_severity", &self.min_severity)
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

/// The body and headers of one request.
struct Request {
    body: Vec<u8>,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Sink {
    pub fn new(
        name: &str,
        kind: Kind,
        min_severity: Severity,
        delivery: Delivery,
    ) -> anyhow::Result<Sink> {
        let client = reqwest::Client::builder()
            .timeout(delivery.timeout)
            .connect_timeout(delivery.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("hemostat-alert/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let rate = NonZeroU32::new(delivery.per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Ok(Sink {
            name: name.to_owned(),
            kind,
            min_severity,
            client,
            limiter: RateLimiter::direct(Quota::per_minute(rate)),
            delivery,
        })
    }

    fn url(&self) -> &str {
        match &self.kind {
            Kind::Slack { url } | Kind::Webhook { url, .. } | Kind::PagerDuty { url, .. } => url,
        }
    }

    /// The notifications of `batch` this sink takes: at or above its severity (recoveries
    /// always), and for PagerDuty only the pageable ones.
    pub fn accepts(&self, n: &crate::notify::Notification) -> bool {
        let severity_ok =
            n.severity >= self.min_severity || n.status == crate::notify::Status::Resolved;
        match self.kind {
            Kind::PagerDuty { .. } => severity_ok && n.page,
            _ => severity_ok,
        }
    }

    /// The requests this sink makes for `batch` (after its filters).
    fn requests(&self, batch: &Batch, ctx: &RenderContext) -> Vec<Request> {
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
        let json = |v: Value| Request {
            body: v.to_string().into_bytes(),
            content_type: "application/json",
            headers: Vec::new(),
        };
        match &self.kind {
            Kind::Slack { .. } => vec![json(render::slack(&batch, ctx))],
            Kind::Webhook {
                preset: Preset::Json,
                ..
            } => vec![json(render::json_body(&batch))],
            Kind::Webhook {
                preset: Preset::Discord,
                ..
            } => vec![json(render::discord(&batch, ctx))],
            Kind::Webhook {
                preset: Preset::Teams,
                ..
            } => vec![json(render::teams(&batch, ctx))],
            Kind::Webhook {
                preset: Preset::Ntfy,
                ..
            } => {
                let (body, headers) = render::ntfy(&batch, ctx);
                vec![Request {
                    body: body.into_bytes(),
                    content_type: "text/plain; charset=utf-8",
                    headers,
                }]
            }
            Kind::PagerDuty { routing_key, .. } => batch
                .notifications
                .iter()
                .filter_map(|n| render::pagerduty(n, routing_key))
                .map(json)
                .collect(),
        }
    }

    /// Delivers `batch`: every request of it, each with the retry budget.
    pub async fn deliver(&self, batch: &Batch, ctx: &RenderContext) -> Delivered {
        let requests = self.requests(batch, ctx);
        if requests.is_empty() {
            return Delivered::NotForThisSink;
        }
        let mut last = Delivered::NotForThisSink;
        for r in requests {
            last = self.send(&r).await;
            if matches!(last, Delivered::Failed { .. }) {
                return last;
            }
        }
        last
    }

    async fn send(&self, r: &Request) -> Delivered {
        let mut delay = self.delivery.backoff_initial;
        let mut reason = String::new();
        for attempt in 1..=self.delivery.attempts.max(1) {
            self.limiter.until_ready().await;
            let mut req = self
                .client
                .post(self.url())
                .header(reqwest::header::CONTENT_TYPE, r.content_type)
                .body(r.body.clone());
            for (k, v) in &r.headers {
                req = req.header(*k, v);
            }
            let mut wait = delay;
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    return Delivered::Sent {
                        attempts: attempt,
                        status: resp.status().as_u16(),
                    };
                }
                Ok(resp) => {
                    let status = resp.status();
                    reason = format!("{} answered {status}", self.name);
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        if let Some(after) = retry_after(&resp) {
                            wait = after
                                .min(self.delivery.backoff_max.max(Duration::from_secs(1)) * 4);
                        }
                    } else if status.is_client_error() {
                        // 4xx other than 429 will not get better by retrying (bad URL, bad key).
                        return Delivered::Failed {
                            attempts: attempt,
                            reason,
                        };
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
                    reason = format!("{} {kind}: {}", self.name, e.without_url());
                }
            }
            if attempt < self.delivery.attempts {
                tracing::info!(sink = %self.name, attempt, retry_in = ?wait, reason = %reason, "delivery failed; retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(self.delivery.backoff_max);
            }
        }
        Delivered::Failed {
            attempts: self.delivery.attempts,
            reason,
        }
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// A sink behind a queue, so it is never waited on by the others.
#[derive(Clone, Debug)]
pub struct Queued {
    pub sink: Arc<Sink>,
    pub tx: tokio::sync::mpsc::Sender<Arc<Batch>>,
}
