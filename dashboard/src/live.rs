//! The live feed: one Redis subscription (`hemostat:*`) fanned out to every browser over
//! server-sent events, plus a watch on Redis so the page can say "reconnecting…" while Redis
//! is away instead of silently showing stale numbers.
//!
//! One subscription for all viewers keeps Redis' load flat however many tabs are open. A slow
//! browser that falls behind the fan-out buffer is told to `resync` (reload over the API)
//! rather than holding the others up.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use hemostat_common::agent::spawn_critical;
use hemostat_common::bus::{Bus, subscribe_bus};
use hemostat_common::events::{Channel, Envelope};
use hemostat_common::http::Health;
use hemostat_common::metrics::{AgentMetrics, ChannelLabel};
use hemostat_common::shutdown::Shutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{broadcast, watch};
use tokio_util::task::TaskTracker;

use crate::model::TimelineItem;
use crate::store;

/// Messages buffered per viewer before it is told to resync.
const FANOUT: usize = 1024;
/// How often Redis is pinged for the status shown on the page.
const PING_EVERY: Duration = Duration::from_secs(2);
/// How long a ping may take before Redis counts as away.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Keep-alive comments, so proxies do not close an idle feed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What the browser waits before reconnecting a dropped feed.
const RETRY: Duration = Duration::from_secs(2);

/// The fan-out and the Redis status, shared by every viewer.
#[derive(Clone, Debug)]
pub struct Live {
    events: broadcast::Sender<Arc<str>>,
    redis_up: watch::Receiver<bool>,
    viewers: Gauge,
    shutdown: Shutdown,
}

impl Live {
    /// Starts the subscriber and the Redis watcher on `tracker`.
    pub fn start(
        bus: &Bus,
        metrics: &AgentMetrics,
        health: &Health,
        viewers: Gauge,
        shutdown: &Shutdown,
        tracker: &TaskTracker,
    ) -> Live {
        let (events, _) = broadcast::channel(FANOUT);
        let (up_tx, redis_up) = watch::channel(true);

        let mut rx = subscribe_bus(bus, vec!["hemostat:*".into()], shutdown.clone());
        let tx = events.clone();
        let m = metrics.clone();
        spawn_critical(tracker, shutdown, "live fan-out", async move {
            while let Some((channel, payload)) = rx.recv().await {
                if let Some(msg) = to_message(&channel, &payload) {
                    m.events_in
                        .get_or_create(&ChannelLabel::new(&channel))
                        .inc();
                    // No viewer connected is not an error.
                    let _ = tx.send(msg);
                }
            }
        });

        let bus = bus.clone();
        let health = health.clone();
        let stop = shutdown.clone();
        let m = metrics.clone();
        spawn_critical(tracker, shutdown, "redis watch", async move {
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let up = match tokio::time::timeout(PING_TIMEOUT, store::ping(&bus)).await {
                    Ok(Ok(())) => {
                        health.ok("redis");
                        true
                    }
                    Ok(Err(e)) => {
                        health.degraded("redis", e.to_string());
                        false
                    }
                    Err(_) => {
                        health.degraded("redis", "no answer to PING within 2 s");
                        false
                    }
                };
                m.redis_up.set(i64::from(up));
                up_tx.send_if_modified(|v| std::mem::replace(v, up) != up);
            }
        });

        Live {
            events,
            redis_up,
            viewers,
            shutdown: shutdown.clone(),
        }
    }

    /// Whether Redis answered the last ping.
    pub fn redis_up(&self) -> bool {
        *self.redis_up.borrow()
    }

    /// One viewer's feed: a `status` event now and whenever Redis comes or goes, an `event`
    /// per envelope (a timeline item), `resync` after falling behind. Ends at shutdown, so a
    /// graceful stop is not held up by open browsers.
    pub fn sse(&self) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let state = Viewer {
            events: self.events.subscribe(),
            redis_up: self.redis_up.clone(),
            shutdown: self.shutdown.clone(),
            first: true,
            _count: ViewerCount::new(self.viewers.clone()),
        };
        let stream = futures::stream::unfold(state, |mut v| async move {
            let ev = v.next().await?;
            Some((Ok(ev), v))
        });
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
    }
}

/// Counts open feeds for `/metrics` while it lives.
struct ViewerCount(Gauge);

impl ViewerCount {
    fn new(g: Gauge) -> ViewerCount {
        g.inc();
        ViewerCount(g)
    }
}

impl Drop for ViewerCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Viewer {
    events: broadcast::Receiver<Arc<str>>,
    redis_up: watch::Receiver<bool>,
    shutdown: Shutdown,
    first: bool,
    _count: ViewerCount,
}

fn status_event(up: bool) -> Event {
    let body = if up {
        r#"{"redis":"up"}"#
    } else {
        r#"{"redis":"down"}"#
    };
    Event::default().event("status").data(body)
}

impl Viewer {
    async fn next(&mut self) -> Option<Event> {
        if self.first {
            self.first = false;
            let up = *self.redis_up.borrow_and_update();
            return Some(status_event(up).retry(RETRY));
        }
        tokio::select! {
            () = self.shutdown.cancelled() => None,
            changed = self.redis_up.changed() => match changed {
                Ok(()) => Some(status_event(*self.redis_up.borrow_and_update())),
                // The watcher ended: shutting down.
                Err(_) => None,
            },
            msg = self.events.recv() => match msg {
                Ok(data) => Some(Event::default().event("event").data(&*data)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Some(Event::default().event("resync").data(format!(r#"{{"missed":{n}}}"#)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
        }
    }
}

/// A pub/sub message as the page wants it: the timeline item of the envelope, on one line.
/// Messages on channels that are not ours, or that do not decode, are not forwarded.
pub fn to_message(channel: &str, payload: &str) -> Option<Arc<str>> {
    Channel::from_name(channel)?;
    let env = Envelope::from_json(payload).ok()?;
    // serde_json writes no raw newlines, which SSE would split into separate data lines.
    serde_json::to_string(&TimelineItem::new(&env))
        .ok()
        .map(Arc::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::events::{Escalation, EscalationKind, Payload, Severity};

    #[test]
    fn messages_are_timeline_items_on_one_line() {
        let env = Envelope::new(
            "responder",
            "h1",
            Payload::Escalation(Escalation {
                proposal: None,
                kind: EscalationKind::Other,
                severity: Severity::Warning,
                container: None,
                summary: "two\nlines".into(),
                detail: String::new(),
            }),
        );
        let msg = to_message("hemostat:alerts", &env.to_json()).unwrap();
        assert!(!msg.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v["id"], env.id.as_str());
        assert_eq!(v["event_type"], "escalation");
        assert_eq!(v["envelope"]["data"]["summary"], "two\nlines");
        assert!(to_message("hemostat:alerts", "{nope").is_none());
        assert!(to_message("other:channel", &env.to_json()).is_none());
    }
}
