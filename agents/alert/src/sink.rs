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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub body: Vec<u8>,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
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
        let json = |v: Value| Request {
            body: v.to_string().into_bytes(),
            content_type: "application/json".into(),
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
                    content_type: "text/plain; charset=utf-8".into(),
                    headers: headers
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
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
        let mut req = self
            .client
            .post(self.url())
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
