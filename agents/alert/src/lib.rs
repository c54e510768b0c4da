//! hemostat-alert: tells people what happened, once, clearly, and loses nothing.
//!
//! Envelopes (remediation results, escalations, optionally crash notices and false alarms)
//! become [`notify::Notification`]s, go through the [`engine::Engine`] (silences, folding,
//! grouping, repeat, resolve), and each resulting batch is handed to every sink's own queue
//! ([`sink`]); a sink that is slow or down delays only itself. Every decision (sent, folded,
//! silenced, failed) is kept in `hemostat:stream:notifications`.

pub mod config;
pub mod engine;
pub mod notify;
pub mod render;
pub mod sink;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::{Bus, ConsumerConfig, RecentWindow, consume};
use hemostat_common::events::{Channel, Envelope, Payload};
use hemostat_common::shutdown::Shutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{Notify, mpsc};

use crate::config::AlertConfig;
use crate::engine::{Batch, Decision, Engine, Silence};
use crate::render::RenderContext;
use crate::sink::{Delivered, Queued, Sink};

/// The agent's name on the bus and its consumer group.
pub const AGENT: &str = "alert";
/// Where notification decisions are kept.
pub const HISTORY_STREAM: &str = "hemostat:stream:notifications";
/// Active silences: a hash of id → JSON [`Silence`].
pub const SILENCES_KEY: &str = "hemostat:silences";
/// Batches a sink's queue holds before new ones are recorded as failed.
const SINK_QUEUE: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub decision: String,
    pub sink: String,
}

#[derive(Clone, Debug, Default)]
pub struct AlertMetrics {
    pub decisions: Family<DecisionLabel, Counter>,
}

/// The service's shared state.
pub struct AlertService {
    cfg: AlertConfig,
    bus: Bus,
    engine: Mutex<Engine>,
    wake: Notify,
    silences: RwLock<Vec<Silence>>,
    /// PagerDuty sinks' queues (for recoveries that bypass the engine).
    pagers: std::sync::OnceLock<Vec<Queued>>,
    render: RenderContext,
    /// Recent verdicts, read incrementally: a remediation's message quotes the verdict's why.
    recent_verdicts: RecentWindow,
    pub metrics: AlertMetrics,
}

impl std::fmt::Debug for AlertService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertService")
            .field("sinks", &self.cfg.sinks.len())
            .finish_non_exhaustive()
    }
}

impl AlertService {
    pub fn new(cfg: AlertConfig, bus: Bus) -> AlertService {
        AlertService {
            engine: Mutex::new(Engine::new(cfg.engine)),
            render: RenderContext {
                dashboard_url: cfg.dashboard_url.clone(),
            },
            cfg,
            bus,
            wake: Notify::new(),
            silences: RwLock::default(),
            pagers: std::sync::OnceLock::new(),
            recent_verdicts: RecentWindow::new(Channel::RemediationNeeded, 500),
            metrics: AlertMetrics::default(),
        }
    }

    /// Builds the sinks from config.
    pub fn sinks(&self) -> anyhow::Result<Vec<Arc<Sink>>> {
        self.cfg
            .sinks
            .iter()
            .map(|s| {
                Sink::new(&s.name, s.kind.clone(), s.min_severity, self.cfg.delivery).map(Arc::new)
            })
            .collect()
    }

    pub fn render_context(&self) -> &RenderContext {
        &self.render
    }

    /// Appends one decision to the history stream, trimmed to the retention period.
    async fn history(
        &self,
        decision: &str,
        sink: &str,
        fingerprint: &str,
        event_id: &str,
        detail: &str,
    ) {
        self.metrics
            .decisions
            .get_or_create(&DecisionLabel {
                decision: decision.to_owned(),
                sink: sink.to_owned(),
            })
            .inc();
        let min_id =
            (Utc::now().timestamp_millis() - self.cfg.history_retention.as_millis() as i64).max(0);
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(HISTORY_STREAM)
            .arg("MINID")
            .arg("~")
            .arg(min_id)
            .arg("*")
            .arg("decision")
            .arg(decision)
            .arg("sink")
            .arg(sink)
            .arg("fingerprint")
            .arg(fingerprint)
            .arg("event_id")
            .arg(event_id)
            .arg("detail")
            .arg(detail)
            .arg("at")
            .arg(Utc::now().to_rfc3339())
            .ignore();
        if let Err(e) = self.bus.run(&pipe).await {
            tracing::warn!(error = %e, "could not record a notification decision");
        }
    }

    /// Handles one envelope from any of the consumed streams.
    pub async fn handle(&self, env: Envelope) -> anyhow::Result<()> {
        if !self
            .bus
            .first_time(AGENT, &env.id, Duration::from_secs(7 * 86_400))
            .await?
        {
            return Ok(());
        }
        let Some(mut n) = notify::from_envelope(&env, self.cfg.sources) else {
            // Recoveries still resolve PagerDuty incidents when crash notices are off.
            if !self.cfg.sources.crashes
                && matches!(env.payload, Payload::ContainerRecovered(_))
                && let Some(n) = notify::from_envelope(
                    &env,
                    notify::Sources {
                        crashes: true,
                        false_alarms: false,
                    },
                )
                && let Some(pagers) = self.pagers.get()
            {
                let batch = Arc::new(Batch {
                    notifications: vec![n],
                });
                for q in pagers {
                    let _ = q.tx.try_send(batch.clone());
                }
            }
            return Ok(());
        };
        // A remediation message says why, too: find the verdict it answered.
        if let Payload::RemediationComplete(r) = &env.payload {
            let verdict = self.recent_verdicts.read(&self.bus, |mut recent| {
                recent
                    .find(|e| e.id == r.request_id)
                    .and_then(|e| match &e.payload {
                        Payload::RemediationNeeded(req) => {
                            Some((req.root_cause.clone(), req.confidence, req.analysis_method))
                        }
                        _ => None,
                    })
            });
            if let Ok(Some((root_cause, confidence, method))) = verdict.await {
                n = notify::with_verdict(n, &root_cause, confidence, method);
            }
        }
        let silences = self
            .silences
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let fingerprint = n.fingerprint.clone();
        let decision = {
            let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
            engine.ingest(n, tokio::time::Instant::now(), Utc::now(), &silences)
        };
        match decision {
            Decision::Queued => self.wake.notify_one(),
            Decision::Folded(why) => {
                self.history("folded", "-", &fingerprint, &env.id, &why)
                    .await
            }
            Decision::Silenced(id) => {
                self.history(
                    "silenced",
                    "-",
                    &fingerprint,
                    &env.id,
                    &format!("silence {id}"),
                )
                .await
            }
        }
        Ok(())
    }

    /// Flushes due batches to every sink's queue until shutdown (then one last flush).
    async fn flusher(self: Arc<Self>, sinks: Vec<Queued>, shutdown: Shutdown) {
        loop {
            let due = self.engine.lock().unwrap_or_else(|p| p.into_inner()).due();
            tokio::select! {
                () = shutdown.cancelled() => break,
                // A new notification may start a batch.
                () = self.wake.notified() => continue,
                () = async { match due { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {}
            }
            let batch = self
                .engine
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .flush(tokio::time::Instant::now());
            if let Some(batch) = batch {
                self.dispatch(Arc::new(batch), &sinks).await;
            }
        }
        // Whatever is waiting in the batch goes out now rather than being lost.
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        let batch = self
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush(far);
        if let Some(batch) = batch {
            self.dispatch(Arc::new(batch), &sinks).await;
        }
    }

    async fn dispatch(&self, batch: Arc<Batch>, sinks: &[Queued]) {
        if sinks.is_empty() {
            for n in &batch.notifications {
                self.history(
                    "not_sent",
                    "-",
                    &n.fingerprint,
                    &n.event_id,
                    "no sink configured",
                )
                .await;
            }
            return;
        }
        for q in sinks {
            if q.tx.try_send(batch.clone()).is_err() {
                for n in &batch.notifications {
                    self.history(
                        "failed",
                        &q.sink.name,
                        &n.fingerprint,
                        &n.event_id,
                        "sink queue full",
                    )
                    .await;
                }
            }
        }
    }

    /// One sink's worker: delivers its batches in order, records each outcome, dead-letters
    /// what exhausted the retry budget.
    async fn sink_worker(self: Arc<Self>, sink: Arc<Sink>, mut rx: mpsc::Receiver<Arc<Batch>>) {
        while let Some(batch) = rx.recv().await {
            let outcome = sink.deliver(&batch, &self.render).await;
            for n in &batch.notifications {
                if !sink.accepts(n) {
                    self.history(
                        "filtered",
                        &sink.name,
                        &n.fingerprint,
                        &n.event_id,
                        "not for this sink (severity or kind)",
                    )
                    .await;
                    continue;
                }
                match &outcome {
                    Delivered::Sent { attempts, status } => {
                        self.history(
                            "sent",
                            &sink.name,
                            &n.fingerprint,
                            &n.event_id,
                            &format!("HTTP {status} after {attempts} attempt(s)"),
                        )
                        .await;
                    }
                    Delivered::NotForThisSink => {}
                    Delivered::Failed { reason, .. } => {
                        self.history("failed", &sink.name, &n.fingerprint, &n.event_id, reason)
                            .await;
                    }
                }
            }
            if let Delivered::Failed { attempts, reason } = &outcome {
                tracing::warn!(sink = %sink.name, attempts, reason = %reason, "notification dead-lettered");
                let tried: Vec<_> = batch
                    .notifications
                    .iter()
                    .filter(|n| sink.accepts(n))
                    .collect();
                let payload = serde_json::to_string(&tried).unwrap_or_default();
                let source = format!("alert:{}", sink.name);
                if let Err(e) = self
                    .bus
                    .dead_letter(
                        &source,
                        None,
                        None,
                        &format!("delivery failed after {attempts} attempt(s): {reason}"),
                        &payload,
                    )
                    .await
                {
                    tracing::error!(error = %e, "could not dead-letter a notification");
                }
            } else if let Delivered::Sent { attempts, .. } = &outcome {
                tracing::info!(sink = %sink.name, notifications = batch.notifications.len(), attempts, "notification sent");
            }
        }
    }

    /// Keeps the in-memory silences in step with Redis, dropping expired ones.
    async fn silence_refresher(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match load_silences(&self.bus).await {
                Ok(list) => *self.silences.write().unwrap_or_else(|p| p.into_inner()) = list,
                Err(e) => tracing::debug!(error = %e, "could not load silences"),
            }
        }
    }

    /// Loads silences now (tests and start-up).
    pub async fn refresh_silences(&self) -> anyhow::Result<()> {
        let list = load_silences(&self.bus).await?;
        *self.silences.write().unwrap_or_else(|p| p.into_inner()) = list;
        Ok(())
    }
}

/// Active silences from Redis; expired ones are deleted on the way.
pub async fn load_silences(bus: &Bus) -> anyhow::Result<Vec<Silence>> {
    let mut conn = bus.connection();
    let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(SILENCES_KEY)
        .query_async(&mut conn)
        .await?;
    let now = Utc::now();
    let mut out = Vec::new();
    for (id, raw) in all {
        match serde_json::from_str::<Silence>(&raw) {
            Ok(s) if s.expires_at > now => out.push(s),
            _ => {
                let _: () = redis::cmd("HDEL")
                    .arg(SILENCES_KEY)
                    .arg(&id)
                    .query_async(&mut conn)
                    .await?;
            }
        }
    }
    out.sort_by_key(|s| s.created_at);
    Ok(out)
}

/// Stores a silence and audits it.
pub async fn add_silence(bus: &Bus, s: &Silence) -> anyhow::Result<()> {
    let mut conn = bus.connection();
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(SILENCES_KEY)
        .arg(&s.id)
        .arg(serde_json::to_string(s)?)
        .ignore()
        .cmd("XADD")
        .arg(hemostat_common::events::AUDIT_STREAM)
        .arg("*")
        .arg("event_type")
        .arg("silence_added")
        .arg("silence")
        .arg(serde_json::to_string(s)?)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Ends a silence now and audits it. Returns whether it existed.
pub async fn expire_silence(bus: &Bus, id: &str, by: &str) -> anyhow::Result<bool> {
    let mut conn = bus.connection();
    let (removed,): (u32,) = redis::pipe()
        .atomic()
        .cmd("HDEL")
        .arg(SILENCES_KEY)
        .arg(id)
        .cmd("XADD")
        .arg(hemostat_common::events::AUDIT_STREAM)
        .arg("*")
        .arg("event_type")
        .arg("silence_expired")
        .arg("silence_id")
        .arg(id)
        .arg("by")
        .arg(by)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(removed > 0)
}

/// Starts the consumers, the flusher, the sink workers and the silence refresher.
pub fn spawn(svc: Arc<AlertService>, sinks: Vec<Arc<Sink>>, ctx: &AgentContext) {
    ctx.registry.with(|r| {
        r.register(
            "hemostat_alert_decisions",
            "Notification decisions by sink",
            svc.metrics.decisions.clone(),
        );
    });
    let mut queued = Vec::new();
    for sink in sinks {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        queued.push(Queued {
            sink: sink.clone(),
            tx,
        });
        // Sink workers end when the flusher drops its senders, after the last flush.
        ctx.tracker.spawn(svc.clone().sink_worker(sink, rx));
    }
    let pagers: Vec<Queued> = queued
        .iter()
        .filter(|q| matches!(q.sink.kind, sink::Kind::PagerDuty { .. }))
        .cloned()
        .collect();
    let has_pager = !pagers.is_empty();
    let _ = svc.pagers.set(pagers);
    ctx.tracker
        .spawn(svc.clone().flusher(queued, ctx.shutdown.clone()));
    ctx.tracker
        .spawn(svc.clone().silence_refresher(ctx.shutdown.clone()));

    let mut channels = vec![Channel::RemediationComplete, Channel::Alerts];
    if svc.cfg.sources.crashes || has_pager {
        channels.push(Channel::HealthAlert);
    }
    if svc.cfg.sources.false_alarms {
        channels.push(Channel::FalseAlarm);
    }
    for channel in channels {
        let cfg = ConsumerConfig::new(channel, AGENT, &ctx.identity.instance);
        let bus = ctx.bus.clone();
        let shutdown = ctx.shutdown.clone();
        let svc = svc.clone();
        ctx.tracker.spawn(async move {
            consume(&bus, cfg, shutdown, |env| {
                let svc = svc.clone();
                async move { svc.handle(env).await }
            })
            .await;
        });
    }
}
