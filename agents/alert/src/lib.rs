//! hemostat-alert: tells people what happened, once, clearly, and loses nothing.
//!
//! Envelopes (remediation results, escalations, optionally crash notices and false alarms)
//! become [`notify::Notification`]s and go through the [`engine`] (silences, folding, repeat,
//! resolve). Everything after that lives in Redis ([`store`]), never only in the process: a
//! notification joins the group being gathered in the same atomic step that marks its envelope
//! handled (and only then is the envelope acked); when the group is due (`group_wait`) it moves
//! whole into every sink's own outbox; each sink's worker makes one request at a time to the
//! head of its outbox, keeping the retry schedule (and its rate limit's waits) as due times in
//! Redis. A notification leaves its outbox only with its `sent`, `failed` or dead-letter
//! record. So a killed agent's successor carries on from exactly where it stopped: a page is
//! delivered at least once. Every decision (sent, folded, silenced, filtered, failed) is kept
//! in `hemostat:stream:notifications`.

pub mod config;
pub mod engine;
pub mod escape;
pub mod mail;
pub mod notify;
pub mod render;
pub mod sink;
pub mod store;
pub mod urls;

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::Utc;
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::{Bus, ConsumerConfig, Disposition, Op, RecentWindow, consume_batches};
use hemostat_common::events::{Channel, Envelope, Payload};
use hemostat_common::shutdown::Shutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::config::AlertConfig;
use crate::engine::{Batch, Decision, Silence};
use crate::notify::Notification;
use crate::render::RenderContext;
use crate::sink::{Attempt, Kind, Sink};
use crate::store::{Applied, Delivery, Pre, Store, keys};

/// The agent's name on the bus and its consumer group.
pub const AGENT: &str = "alert";
/// Where notification decisions are kept.
pub const HISTORY_STREAM: &str = "hemostat:stream:notifications";
/// Active silences: a hash of id → JSON [`Silence`].
pub const SILENCES_KEY: &str = "hemostat:silences";
/// Deliveries a sink's outbox holds; beyond it a batch is recorded failed and dead-lettered.
const SINK_QUEUE: u64 = 1000;
/// Notifications one group holds; a group that reaches it is sent at once.
const GROUP_MAX: usize = 500;
/// How long handled markers live.
const HANDLED_TTL_S: u64 = 7 * 86_400;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub decision: String,
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Default)]
pub struct AlertMetrics {
    pub decisions: Family<DecisionLabel, Counter>,
    /// Deliveries waiting in each sink's outbox at the last look.
    pub outbox: Family<SinkLabel, Gauge>,
    /// Requests made to each sink, by how they went: `sent`, `retry` (due again later) or
    /// `failed` (given up, dead-lettered).
    pub attempts: Family<AttemptLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabel {
    pub sink: String,
    pub outcome: String,
}

/// Fingerprint states an instance remembers between ingests; past it, it forgets them all
/// and reads each again once (each entry is a fingerprint and a few numbers: about 200 bytes).
const FP_CACHE_MAX: usize = 20_000;

/// What an ingest decides against, as this instance last read or wrote it, each with the
/// version it had. Every write is checked against those versions in Redis (`Store::apply`), so
/// a stale copy costs one retry on fresh state, never a wrong decision; and the group (up to
/// `GROUP_MAX` notifications) and a fingerprint are read again only after someone else
/// changed them, not once per notification.
#[derive(Debug, Default)]
struct IngestCache {
    group: Option<store::Group>,
    fps: std::collections::HashMap<String, (engine::FpState, String)>,
}

/// What one envelope asks of the agent.
enum Prepared {
    Nothing,
    /// A recovery only the pager sinks need: its marker and notification.
    Page(String, Notification),
    /// A notification for the engine: its envelope's marker and the notification.
    Ingest(String, Notification),
}

/// The service's shared state.
pub struct AlertService {
    cfg: AlertConfig,
    bus: Bus,
    store: Store,
    /// The configured sinks, set when the service is spawned.
    sinks: OnceLock<Vec<Arc<Sink>>>,
    /// This instance's name: the owner of the deliveries it has in flight.
    owner: OnceLock<String>,
    /// Wakes the flusher: a notification joined the group.
    group_wake: Notify,
    /// Wakes the sink workers: deliveries were queued.
    sink_wake: Notify,
    /// Set once the last flush at shutdown is done: the workers drain after it.
    flushed_for_good: tokio::sync::watch::Sender<bool>,
    silences: RwLock<Vec<Silence>>,
    /// The key that signs approval links, once read from Redis.
    approval_key: RwLock<Option<Vec<u8>>>,
    /// Maintenance windows, as last read (with the silences).
    windows: RwLock<Vec<hemostat_common::maintenance::Window>>,
    render: RenderContext,
    /// Recent verdicts, read incrementally: a remediation's message quotes the verdict's why.
    recent_verdicts: RecentWindow,
    /// The group and fingerprint states as this instance last read or wrote them. Ingests
    /// take it in turn.
    cache: tokio::sync::Mutex<IngestCache>,
    pub metrics: AlertMetrics,
}

impl std::fmt::Debug for AlertService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertService")
            .field("sinks", &self.cfg.sinks.len())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

impl AlertService {
    pub fn new(cfg: AlertConfig, bus: Bus) -> AlertService {
        AlertService {
            render: RenderContext {
                dashboard_url: cfg.dashboard_url.clone(),
                approval_key: None,
            },
            approval_key: RwLock::default(),
            store: Store::new(bus.clone()),
            cfg,
            bus,
            sinks: OnceLock::new(),
            owner: OnceLock::new(),
            group_wake: Notify::new(),
            sink_wake: Notify::new(),
            flushed_for_good: tokio::sync::watch::Sender::new(false),
            silences: RwLock::default(),
            windows: RwLock::default(),
            recent_verdicts: RecentWindow::new(Channel::RemediationNeeded, 500),
            cache: tokio::sync::Mutex::default(),
            metrics: AlertMetrics::default(),
        }
    }

    /// Builds the sinks from config.
    pub fn sinks(&self) -> anyhow::Result<Vec<Arc<Sink>>> {
        self.cfg
            .sinks
            .iter()
            .map(|s| {
                Sink::new(
                    &s.name,
                    s.kind.clone(),
                    s.min_severity,
                    &s.route,
                    self.cfg.delivery,
                )
                .map(Arc::new)
            })
            .collect()
    }

    pub fn render_context(&self) -> &RenderContext {
        &self.render
    }

    fn live_sinks(&self) -> &[Arc<Sink>] {
        self.sinks.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// What renderers see: the dashboard's URL and, when a message links to a proposal, the
    /// key that signs the link (read from Redis the first time it is needed; without it the
    /// message says to decide in the dashboard).
    async fn render_for(&self, needs_key: bool) -> RenderContext {
        let mut ctx = self.render.clone();
        if !needs_key {
            return ctx;
        }
        let known = self
            .approval_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ctx.approval_key = match known {
            Some(k) => Some(k),
            None => {
                let mut conn = self.bus.connection();
                let k: Option<String> = redis::cmd("GET")
                    .arg(hemostat_common::events::proposals::SIGNING_KEY)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(None);
                let k = k.map(String::into_bytes);
                if k.is_some() {
                    *self.approval_key.write().unwrap_or_else(|p| p.into_inner()) = k.clone();
                }
                k
            }
        };
        ctx
    }

    /// Whether `sink` takes `n`: `n` is on the sink's route, and the sink's severity and kind
    /// take it.
    fn takes(&self, sink: &Sink, n: &Notification) -> bool {
        config::routes_of(n, &self.cfg.routes).contains(&sink.route.as_str()) && sink.accepts(n)
    }

    fn owner(&self) -> &str {
        self.owner.get().map(String::as_str).unwrap_or("alert")
    }

    fn count(&self, decision: &str, sink: &str, n: usize) {
        self.metrics
            .decisions
            .get_or_create(&DecisionLabel {
                decision: decision.to_owned(),
                sink: sink.to_owned(),
            })
            .inc_by(n as u64);
    }

    /// The op that records one decision in the history stream, trimmed to the retention.
    fn history_op(&self, decision: &str, sink: &str, n: &Notification, detail: &str) -> Op {
        let min_id = now_ms().saturating_sub(self.cfg.history_retention.as_millis() as u64);
        let at = Utc::now().to_rfc3339();
        store::history_op(
            HISTORY_STREAM,
            min_id,
            &[
                ("decision", decision),
                ("sink", sink),
                ("fingerprint", &n.fingerprint),
                ("event_id", &n.event_id),
                ("detail", detail),
                ("at", &at),
            ],
        )
    }

    /// Handles one envelope from any of the consumed streams: it is acked only once what it
    /// means is recorded in Redis (in the group, or as a decision).
    pub async fn handle(&self, env: Envelope) -> Disposition {
        let mut d = self.handle_batch(vec![env]).await;
        d.pop()
            .unwrap_or_else(|| Disposition::Retry("nothing was decided".into()))
    }

    /// Handles a read's envelopes, in stream order, with one decision pass and one write for
    /// all of them ([`AlertService::ingest_many`]); one disposition per envelope, in order.
    pub async fn handle_batch(&self, envs: Vec<Envelope>) -> Vec<Disposition> {
        let mut out: Vec<Option<Disposition>> = Vec::with_capacity(envs.len());
        let mut items: Vec<(String, Notification)> = Vec::new();
        let mut slots: Vec<usize> = Vec::new();
        for env in envs {
            match self.prepare(env).await {
                Prepared::Nothing => out.push(Some(Disposition::Ack)),
                Prepared::Page(marker, n) => {
                    out.push(Some(match self.page_directly(&marker, n).await {
                        Ok(()) => Disposition::Ack,
                        Err(e) => Disposition::Retry(format!("{e:#}")),
                    }));
                }
                Prepared::Ingest(marker, n) => {
                    slots.push(out.len());
                    out.push(None);
                    items.push((marker, n));
                }
            }
        }
        if !items.is_empty() {
            let d = match self.ingest_many(items).await {
                Ok(()) => Disposition::Ack,
                Err(e) => Disposition::Retry(format!("{e:#}")),
            };
            for i in slots {
                out[i] = Some(d.clone());
            }
        }
        out.into_iter()
            .map(|d| d.unwrap_or(Disposition::Ack))
            .collect()
    }

    /// What one envelope asks of the agent: nothing, a page straight to the pager sinks, or a
    /// notification for the engine (with the verdict's why, for a remediation result).
    async fn prepare(&self, env: Envelope) -> Prepared {
        let marker = keys::handled(&env.id);
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
            {
                return Prepared::Page(marker, n);
            }
            return Prepared::Nothing;
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
        Prepared::Ingest(marker, n)
    }

    /// Runs `items` (each an envelope's handled marker and its notification), in order, through
    /// the engine against the state in Redis, and records every outcome with its marker in one
    /// step: a fingerprint seen twice in a batch is decided the second time on what the first
    /// made of it, exactly as one at a time. A concurrent change (a flush, a replica, a
    /// redelivery) makes it read and decide again; items whose marker is set by then were
    /// handled already. A batch that fills the group is written up to the full group, the group
    /// is sent, and the rest follow, so a group never holds more than `GROUP_MAX`.
    async fn ingest_many(&self, mut items: Vec<(String, Notification)>) -> anyhow::Result<()> {
        let fp_ttl = self
            .cfg
            .engine
            .repeat_interval
            .max(Duration::from_secs(86_400))
            .as_secs()
            * 2;
        let mut cached = self.cache.lock().await;
        let mut stale_rounds = 0;
        while !items.is_empty() {
            if cached.fps.len() + items.len() > FP_CACHE_MAX {
                cached.fps.clear();
            }
            let mut missing: Vec<&str> = items
                .iter()
                .map(|(_, n)| n.fingerprint.as_str())
                .filter(|fp| !cached.fps.contains_key(*fp))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                cached.fps.extend(self.store.fps(&missing).await?);
            }
            let mut group = match cached.group.take() {
                Some(g) => g,
                None => self.store.group().await?,
            };
            let silences = self
                .silences
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            // Read fresh, not the copy the refresher keeps: a window opened a moment before a
            // failure (a backup script's window, then its first restart) must hold it.
            let windows = match hemostat_common::windows::load(&self.bus).await {
                Ok(w) => {
                    *self.windows.write().unwrap_or_else(|p| p.into_inner()) = w.clone();
                    w
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not read maintenance windows; using the last read");
                    self.windows
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                }
            };
            let now = now_ms();
            let wall = Utc::now();
            // Per fingerprint: the state as read, its version, the state the batch made of it.
            let mut fps: std::collections::HashMap<
                &str,
                (engine::FpState, String, engine::FpState),
            > = std::collections::HashMap::new();
            let mut pre = Vec::with_capacity(items.len() + 2);
            let mut ops = Vec::with_capacity(items.len() * 2 + 4);
            let mut recorded: Vec<&'static str> = Vec::new();
            let mut queued = 0usize;
            let mut taken = 0usize;
            for (marker, n) in &items {
                if taken > 0 && group.notifications.len() >= GROUP_MAX {
                    break;
                }
                taken += 1;
                if let Some(hold) = held_by(&windows, n, wall) {
                    // Recorded, not told: the window's summary tells it when the window ends.
                    pre.push(Pre::Absent(marker.clone()));
                    ops.push(handled_op(marker));
                    ops.push(self.history_op("held", "-", n, &hold.why));
                    ops.extend(hold.ops(n)?);
                    recorded.push("held");
                    continue;
                }
                let (_, _, current) = fps.entry(n.fingerprint.as_str()).or_insert_with(|| {
                    let (s, v) = cached.fps.get(&n.fingerprint).cloned().unwrap_or_default();
                    (s, v, s)
                });
                let (decision, next) = engine::decide(
                    &self.cfg.engine,
                    *current,
                    &group.notifications,
                    n,
                    now,
                    wall,
                    &silences,
                );
                *current = next;
                pre.push(Pre::Absent(marker.clone()));
                ops.push(handled_op(marker));
                match &decision {
                    Decision::Queued => {
                        ops.push(Op::cmd([
                            "HSET",
                            keys::GROUP,
                            &n.event_id,
                            &serde_json::to_string(n)?,
                        ]));
                        group.notifications.push(n.clone());
                        queued += 1;
                    }
                    Decision::Folded(why) => {
                        ops.push(self.history_op("folded", "-", n, why));
                        recorded.push("folded");
                    }
                    Decision::Silenced(id) => {
                        ops.push(self.history_op("silenced", "-", n, &format!("silence {id}")));
                        recorded.push("silenced");
                    }
                }
            }
            let full = group.notifications.len() >= GROUP_MAX;
            if queued > 0 {
                let due = if full {
                    now
                } else {
                    now + self.cfg.engine.group_wait.as_millis() as u64
                };
                if full {
                    ops.push(Op::cmd(["SET", keys::GROUP_DUE, &due.to_string()]));
                } else {
                    ops.push(Op::cmd(["SET", keys::GROUP_DUE, &due.to_string(), "NX"]));
                }
                ops.push(Op::cmd(["INCR", keys::GROUP_VERSION]));
            }
            for (fp, (start, version, next)) in &fps {
                pre.push(Pre::HGet(keys::fp(fp), "v".into(), version.clone()));
                if next != start {
                    ops.extend(store::fp_ops(fp, *next, version, fp_ttl));
                }
            }
            pre.push(Pre::Get(keys::GROUP_VERSION.into(), group.version.clone()));
            trim_history(&mut ops, self.bus.maxlen());
            match self.store.apply(&pre, &ops).await? {
                Applied::Done => {
                    for (fp, (start, version, next)) in fps {
                        let version = if next != start {
                            store::next_version(&version)
                        } else {
                            version
                        };
                        cached.fps.insert(fp.to_owned(), (next, version));
                    }
                    for d in recorded {
                        self.count(d, "-", 1);
                    }
                    if queued > 0 {
                        // What the write made of the group: these joined, and the next version.
                        group.version = store::next_version(&group.version);
                        group.notifications.sort_by_key(|n| n.at);
                        self.group_wake.notify_one();
                    }
                    cached.group = Some(group);
                    items.drain(..taken);
                    if !items.is_empty() && full {
                        // The group is full and due: send it before the rest join.
                        self.flush(false).await?;
                        cached.group = None;
                    }
                }
                Applied::Stale => {
                    stale_rounds += 1;
                    if stale_rounds > 50 {
                        anyhow::bail!(
                            "the notification state kept changing under this agent; retrying later"
                        );
                    }
                    // Handled already (a redelivery) or changed under us: drop what is handled,
                    // forget what may be stale, and decide again on fresh state.
                    let handled = self
                        .markers_set(items.iter().map(|(m, _)| m.as_str()))
                        .await?;
                    let mut handled = handled.into_iter();
                    items.retain(|_| !handled.next().unwrap_or(false));
                    for (_, n) in &items {
                        cached.fps.remove(&n.fingerprint);
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        Ok(())
    }

    /// Which of `markers` are set, in order, in one round trip.
    async fn markers_set<'a>(
        &self,
        markers: impl Iterator<Item = &'a str>,
    ) -> anyhow::Result<Vec<bool>> {
        let mut pipe = redis::pipe();
        let mut n = 0;
        for m in markers {
            pipe.cmd("EXISTS").arg(m);
            n += 1;
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.bus.connection();
        let set: Vec<u32> = pipe.query_async(&mut conn).await?;
        Ok(set.into_iter().map(|v| v == 1).collect())
    }

    /// A recovery that only PagerDuty needs (crash notices are off): straight into the pager
    /// sinks' outboxes, with the handled marker, in one step.
    async fn page_directly(&self, marker: &str, n: Notification) -> anyhow::Result<()> {
        let now = now_ms();
        let mut ops = vec![handled_op(marker)];
        let mut pagers = 0;
        let mut full: Vec<String> = Vec::new();
        for (i, sink) in self
            .live_sinks()
            .iter()
            .filter(|s| s.kind.pager() && self.takes(s, &n))
            .enumerate()
        {
            pagers += 1;
            let (_, queued) = self.store.head(&sink.name).await?;
            if queued >= SINK_QUEUE {
                ops.extend(self.outbox_full_ops(sink, queued, &[&n]));
                full.push(sink.name.clone());
                continue;
            }
            ops.extend(store::enqueue_ops(
                &sink.name,
                std::slice::from_ref(&n),
                now,
                now * 1000 + i as u64,
            ));
        }
        if pagers == 0 {
            return Ok(());
        }
        trim_history(&mut ops, self.bus.maxlen());
        if self
            .store
            .apply(&[Pre::Absent(marker.to_owned())], &ops)
            .await?
            == Applied::Done
        {
            for sink in &full {
                self.bus.count_dead_letter(&format!("alert:{sink}"));
                self.count("failed", sink, 1);
            }
            self.sink_wake.notify_waiters();
        }
        Ok(())
    }

    /// What a sink's full outbox makes of `taken`: recorded failed and dead-lettered, never
    /// dropped unseen.
    fn outbox_full_ops(&self, sink: &Sink, queued: u64, taken: &[&Notification]) -> Vec<Op> {
        let mut ops = vec![store::dead_letter_op(
            &format!("alert:{}", sink.name),
            &format!("the sink's outbox holds {queued} deliveries (its bound is {SINK_QUEUE})"),
            &serde_json::to_string(taken).unwrap_or_default(),
            &Utc::now().to_rfc3339(),
        )];
        for n in taken {
            ops.push(self.history_op("failed", &sink.name, n, "sink queue full"));
        }
        ops
    }

    /// Moves the group, if it is due at `now` (or `force`), into every sink's outbox, with its
    /// `filtered` and `not_sent` records, in one step. Returns whether it moved one.
    async fn flush(&self, force: bool) -> anyhow::Result<bool> {
        for _ in 0..50 {
            let group = self.store.group().await?;
            let now = now_ms();
            let Some(due) = group.due_ms else {
                return Ok(false);
            };
            if due > now && !force {
                return Ok(false);
            }
            let mut ops = vec![
                Op::cmd(["DEL", keys::GROUP, keys::GROUP_DUE]),
                Op::cmd(["INCR", keys::GROUP_VERSION]),
            ];
            let mut counts: Vec<(&'static str, String, usize)> = Vec::new();
            // The repeat interval counts from now for every problem told.
            let mut told: Vec<&str> = group
                .notifications
                .iter()
                .filter(|n| !n.one_off)
                .map(|n| n.fingerprint.as_str())
                .collect();
            told.sort_unstable();
            told.dedup();
            for fp in told {
                ops.push(Op::cmd([
                    "HSET",
                    &keys::fp(fp),
                    "told_ms",
                    &now.to_string(),
                ]));
                // A new version: an ingest that read the state before this write must not
                // write its older `told_ms` back, and a remembered copy is stale now.
                ops.push(Op::cmd(["HINCRBY", &keys::fp(fp), "v", "1"]));
            }
            let sinks = self.live_sinks();
            if sinks.is_empty() {
                for n in &group.notifications {
                    ops.push(self.history_op("not_sent", "-", n, "no sink configured"));
                }
                counts.push(("not_sent", "-".into(), group.notifications.len()));
            }
            let mut seq = now * 1000;
            for sink in sinks {
                let (taken, left): (Vec<&Notification>, Vec<&Notification>) = group
                    .notifications
                    .iter()
                    .partition(|n| self.takes(sink, n));
                for n in &left {
                    ops.push(self.history_op(
                        "filtered",
                        &sink.name,
                        n,
                        "not for this sink (route, severity or kind)",
                    ));
                }
                if !left.is_empty() {
                    counts.push(("filtered", sink.name.clone(), left.len()));
                }
                if taken.is_empty() {
                    continue;
                }
                let (_, queued) = self.store.head(&sink.name).await?;
                // A pager takes one event per notification: one delivery each, so a retry
                // never repeats another's page.
                let batches: Vec<Vec<Notification>> = if sink.kind.pager() {
                    taken.iter().map(|n| vec![(*n).clone()]).collect()
                } else {
                    vec![taken.iter().map(|n| (*n).clone()).collect()]
                };
                if queued + batches.len() as u64 > SINK_QUEUE {
                    ops.extend(self.outbox_full_ops(sink, queued, &taken));
                    counts.push(("failed", sink.name.clone(), taken.len()));
                    continue;
                }
                for b in batches {
                    seq += 1;
                    ops.extend(store::enqueue_ops(&sink.name, &b, now, seq));
                }
            }
            trim_history(&mut ops, self.bus.maxlen());
            let pre = [Pre::Get(keys::GROUP_VERSION.into(), group.version.clone())];
            if self.store.apply(&pre, &ops).await? == Applied::Done {
                for (d, sink, n) in counts {
                    if d == "failed" {
                        self.bus.count_dead_letter(&format!("alert:{sink}"));
                    }
                    self.count(d, &sink, n);
                }
                self.sink_wake.notify_waiters();
                return Ok(true);
            }
            tokio::task::yield_now().await;
        }
        anyhow::bail!("the group kept changing while it was being flushed")
    }

    /// Tells what each maintenance window held, once it has ended (or was ended early): one
    /// summary notification per window occurrence joins the group (idempotent on its marker),
    /// then what was held is forgotten. A crash between the two only repeats the forgetting.
    async fn summarise_windows(&self) -> anyhow::Result<()> {
        let now = Utc::now();
        let now_ms = now.timestamp_millis().max(0) as u64;
        let mut conn = self.bus.connection();
        let pending: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(keys::HELD_ENDS)
            .arg(0)
            .arg(99)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        if pending.is_empty() {
            return Ok(());
        }
        let windows = self
            .windows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (member, end) in pending {
            let window_id = member.split(':').next().unwrap_or_default();
            let live = windows
                .iter()
                .find(|w| w.id == window_id)
                .and_then(|w| w.active_at(now))
                .is_some_and(|o| o.key() == member.split(':').nth(1).unwrap_or_default());
            if live && (end.max(0.0) as u64) > now_ms {
                continue;
            }
            let (held, count, about): (Vec<String>, Option<u64>, Option<String>) = redis::pipe()
                .cmd("LRANGE")
                .arg(keys::held(&member))
                .arg(0)
                .arg(-1)
                .cmd("GET")
                .arg(keys::held_count(&member))
                .cmd("GET")
                .arg(keys::held_about(&member))
                .query_async(&mut conn)
                .await?;
            let held: Vec<Notification> = held
                .iter()
                .filter_map(|raw| serde_json::from_str(raw).ok())
                .collect();
            let marker = keys::handled(&format!("maintenance:{member}"));
            if let Some(n) = notify::window_summary(
                &member,
                about.as_deref().unwrap_or(window_id),
                &held,
                count.unwrap_or(held.len() as u64),
                now,
            ) {
                self.ingest_many(vec![(marker, n)]).await?;
            }
            let _: () = redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(keys::held(&member))
                .arg(keys::held_count(&member))
                .arg(keys::held_about(&member))
                .ignore()
                .cmd("ZREM")
                .arg(keys::HELD_ENDS)
                .arg(&member)
                .ignore()
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Sends due groups on until shutdown; at shutdown, sends what is being gathered at once
    /// rather than leaving it to a successor.
    async fn flusher(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            if let Err(e) = self.summarise_windows().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not summarise a maintenance window; trying again"
                );
            }
            let due = self.store.group_due().await.ok().flatten();
            let wait = match due {
                Some(d) => {
                    Duration::from_millis(d.saturating_sub(now_ms())).min(Duration::from_secs(1))
                }
                None => Duration::from_secs(1),
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                // A notification joined: its group may have become due (or full).
                () = self.group_wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = self.flush(false).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not flush the group; trying again"
                );
            }
        }
        if let Err(e) = self.flush(true).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not flush the group at shutdown; it waits in Redis for the next agent"
            );
        }
        self.flushed_for_good.send_replace(true);
        self.sink_wake.notify_waiters();
    }

    /// One sink's worker: one request at a time to the head of its outbox, in order; a retry,
    /// a rate-limit wait, a lease of another instance are due times it sleeps until, never a
    /// hold on anything. At shutdown it stops taking new requests once what is due is sent (or
    /// its drain time is over); what is left waits in Redis.
    async fn sink_worker(self: Arc<Self>, sink: Arc<Sink>, shutdown: Shutdown) {
        let mut flushed = self.flushed_for_good.subscribe();
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if shutdown.is_cancelled() && drain_until.is_none() {
                // Let the last flush put what was being gathered into the outbox first.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), flushed.wait_for(|f| *f)).await;
                drain_until = Some(
                    tokio::time::Instant::now()
                        + self.cfg.delivery.timeout.min(Duration::from_secs(5)),
                );
            }
            if drain_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
                return;
            }
            let wait = match self.step(&sink).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(sink = %sink.name, error = format!("{e:#}"), "delivery step failed; trying again");
                    Some(Duration::from_secs(1))
                }
            };
            let Some(wait) = wait else { continue };
            if drain_until.is_some() {
                // Draining: only what is due now; the rest waits in Redis for the next agent.
                if wait > Duration::from_millis(50) {
                    return;
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.sink_wake.notified() => {}
                () = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
            }
        }
    }

    /// Looks at the head of `sink`'s outbox and, if it is due and free, makes its next
    /// request. Returns how long to wait before looking again (`None`: look again at once).
    async fn step(&self, sink: &Sink) -> anyhow::Result<Option<Duration>> {
        let (head, len) = self.store.head(&sink.name).await?;
        self.metrics
            .outbox
            .get_or_create(&SinkLabel {
                sink: sink.name.clone(),
            })
            .set(len as i64);
        let Some(d) = head else {
            return Ok(Some(Duration::from_secs(1)));
        };
        let now = now_ms();
        if d.next_at_ms > now {
            return Ok(Some(Duration::from_millis(d.next_at_ms - now)));
        }
        if !d.owner.is_empty() && d.lease_until_ms > now {
            return Ok(Some(Duration::from_millis(d.lease_until_ms - now)));
        }
        let key = keys::delivery(&d.id);
        let seen = [
            Pre::HGet(key.clone(), "owner".into(), d.owner.clone()),
            Pre::HGet(
                key.clone(),
                "lease_until".into(),
                d.lease_until_ms.to_string(),
            ),
        ];
        // The sink's rate limit: a wait is a due time too.
        if let Some(w) = sink.rate_wait() {
            let at = now + w.as_millis() as u64;
            self.store
                .apply(
                    &seen,
                    &[Op::cmd(["HSET", &key, "next_at", &at.to_string()])],
                )
                .await?;
            return Ok(Some(w));
        }
        // Longer than one request can take; after a crash the next agent waits this long.
        let lease = self.cfg.delivery.timeout + Duration::from_secs(5);
        let claimed = self
            .store
            .apply(
                &seen,
                &[Op::cmd([
                    "HSET",
                    &key,
                    "owner",
                    self.owner(),
                    "lease_until",
                    &(now + lease.as_millis() as u64).to_string(),
                ])],
            )
            .await?;
        if claimed == Applied::Stale {
            return Ok(None);
        }
        let batch = Batch {
            notifications: d.notifications.clone(),
        };
        // One request per delivery: only PagerDuty makes one per notification, and its
        // deliveries hold one notification each. The outbox took only what the sink accepts.
        let ctx = self
            .render_for(batch.notifications.iter().any(|n| n.proposal.is_some()))
            .await;
        let mut requests = sink.requests(&batch, &ctx).into_iter();
        let outcome = match requests.next() {
            Some(r) => sink.attempt(&r).await,
            None => Attempt::Fatal {
                reason: "nothing in this delivery is for this sink".into(),
            },
        };
        self.settle(sink, &d, outcome).await?;
        Ok(None)
    }

    /// Records how one request of delivery `d` went, atomically with what it means for the
    /// delivery: done, due again later, or failed for good (and dead-lettered).
    async fn settle(&self, sink: &Sink, d: &Delivery, outcome: Attempt) -> anyhow::Result<()> {
        let key = keys::delivery(&d.id);
        let mine = [Pre::HGet(
            key.clone(),
            "owner".into(),
            self.owner().to_owned(),
        )];
        let attempts = d.attempts + 1;
        let max = self.cfg.delivery.attempts.max(1);
        let (ops, decision, log): (Vec<Op>, Option<&str>, String) = match outcome {
            Attempt::Sent { status } => {
                let protocol = if matches!(sink.kind, Kind::Email(_)) {
                    "SMTP"
                } else {
                    "HTTP"
                };
                let detail = format!("{protocol} {status} after {attempts} attempt(s)");
                let mut ops = store::remove_ops(d);
                for n in &d.notifications {
                    ops.push(self.history_op("sent", &sink.name, n, &detail));
                }
                (ops, Some("sent"), detail)
            }
            Attempt::Retry { reason, after } if attempts < max => {
                let delay = after.unwrap_or_else(|| self.backoff(attempts));
                let at = now_ms() + delay.as_millis() as u64;
                tracing::info!(sink = %sink.name, attempt = attempts, retry_in = ?delay, reason = %reason, "delivery failed; retrying");
                (
                    vec![Op::cmd([
                        "HSET",
                        &key,
                        "attempts",
                        &attempts.to_string(),
                        "next_at",
                        &at.to_string(),
                        "owner",
                        "",
                        "lease_until",
                        "0",
                        "last_error",
                        &reason,
                    ])],
                    None,
                    reason,
                )
            }
            Attempt::Retry { reason, .. } | Attempt::Fatal { reason } => {
                let mut ops = store::remove_ops(d);
                for n in &d.notifications {
                    ops.push(self.history_op("failed", &sink.name, n, &reason));
                }
                ops.push(store::dead_letter_op(
                    &format!("alert:{}", sink.name),
                    &format!("delivery failed after {attempts} attempt(s): {reason}"),
                    &d.raw,
                    &Utc::now().to_rfc3339(),
                ));
                tracing::warn!(sink = %sink.name, attempts, reason = %reason, "notification dead-lettered");
                (ops, Some("failed"), reason)
            }
        };
        let mut ops = ops;
        trim_history(&mut ops, self.bus.maxlen());
        let applied = self.store.apply(&mine, &ops).await? == Applied::Done;
        if applied {
            self.metrics
                .attempts
                .get_or_create(&AttemptLabel {
                    sink: sink.name.clone(),
                    outcome: decision.unwrap_or("retry").to_owned(),
                })
                .inc();
        }
        if applied && let Some(dec) = decision {
            if dec == "failed" {
                self.bus.count_dead_letter(&format!("alert:{}", sink.name));
            }
            self.count(dec, &sink.name, d.notifications.len());
            if dec == "sent" {
                tracing::info!(sink = %sink.name, notifications = d.notifications.len(), attempts, detail = %log, "notification sent");
            }
        }
        Ok(())
    }

    /// The delay after the `attempts`-th failed attempt: `HEMOSTAT_SINK_BACKOFF` doubling to
    /// `HEMOSTAT_SINK_BACKOFF_MAX`.
    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        self.cfg
            .delivery
            .backoff_initial
            .saturating_mul(factor)
            .min(self.cfg.delivery.backoff_max)
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
            match hemostat_common::windows::load(&self.bus).await {
                Ok(list) => *self.windows.write().unwrap_or_else(|p| p.into_inner()) = list,
                Err(e) => tracing::debug!(error = %e, "could not load maintenance windows"),
            }
        }
    }

    /// Loads silences now (tests and start-up).
    pub async fn refresh_silences(&self) -> anyhow::Result<()> {
        let list = load_silences(&self.bus).await?;
        *self.silences.write().unwrap_or_else(|p| p.into_inner()) = list;
        let windows = hemostat_common::windows::load(&self.bus).await?;
        *self.windows.write().unwrap_or_else(|p| p.into_inner()) = windows;
        Ok(())
    }
}

/// Notifications one window occurrence keeps in full for its summary; past it, it counts them.
const HELD_KEEP: usize = 100;

/// A notification held by a maintenance window: why, and where it is kept.
struct Hold {
    why: String,
    /// `<window id>:<occurrence key>`.
    member: String,
    about: String,
    end_ms: u64,
}

impl Hold {
    /// The writes that keep `n` for the window's summary (bounded: the first [`HELD_KEEP`] in
    /// full, every one counted) and schedule the summary for the window's end.
    fn ops(&self, n: &Notification) -> anyhow::Result<Vec<Op>> {
        let ttl = (self.end_ms / 1000).saturating_sub(now_ms() / 1000) + HANDLED_TTL_S;
        let (list, count, about) = (
            keys::held(&self.member),
            keys::held_count(&self.member),
            keys::held_about(&self.member),
        );
        Ok(vec![
            Op::cmd(["RPUSH", &list, &serde_json::to_string(n)?]),
            Op::cmd(["LTRIM", &list, "0", &(HELD_KEEP - 1).to_string()]),
            Op::cmd(["INCR", &count]),
            Op::cmd(["SET", &about, &self.about]),
            Op::cmd(["EXPIRE", &list, &ttl.to_string()]),
            Op::cmd(["EXPIRE", &count, &ttl.to_string()]),
            Op::cmd(["EXPIRE", &about, &ttl.to_string()]),
            Op::cmd([
                "ZADD",
                keys::HELD_ENDS,
                &self.end_ms.to_string(),
                &self.member,
            ]),
        ])
    }
}

/// The maintenance window holding notifications like `n` now, if one does (the one that ends
/// last). A window's own summary is never held by the window it sums up.
fn held_by(
    windows: &[hemostat_common::maintenance::Window],
    n: &Notification,
    now: chrono::DateTime<Utc>,
) -> Option<Hold> {
    use hemostat_common::maintenance::{Pausing, pausing};
    if n.kind == notify::WINDOW_SUMMARY {
        return None;
    }
    let labels = n.container.as_ref().map(|c| (c.name.as_str(), &c.labels));
    let holding = pausing(windows, now, &n.host, labels, Pausing::Notifications);
    let (w, occ) = holding.first()?;
    let about = if w.comment.is_empty() {
        w.describe()
    } else {
        format!("\"{}\" ({})", w.comment, w.describe())
    };
    Some(Hold {
        why: format!("maintenance window {about}: told in its summary when it ends"),
        member: format!("{}:{}", w.id, occ.key()),
        about,
        end_ms: occ.end.timestamp_millis().max(0) as u64,
    })
}

/// The op that marks an envelope handled (its `marker` key, for [`HANDLED_TTL_S`]).
fn handled_op(marker: &str) -> Op {
    Op::cmd(["SET", marker, "1", "EX", &HANDLED_TTL_S.to_string()])
}

/// Bounds the history stream by count (`HEMOSTAT_STREAM_MAXLEN`) as well as by age: every
/// history XADD in `ops` gets a `MAXLEN ~` companion after it.
fn trim_history(ops: &mut Vec<Op>, maxlen: u64) {
    if ops
        .iter()
        .any(|op| matches!(op, Op::Cmd(a) if a.first().map(String::as_str) == Some("XADD") && a.get(1).map(String::as_str) == Some(HISTORY_STREAM)))
    {
        let maxlen = maxlen.to_string();
        ops.push(Op::cmd(["XTRIM", HISTORY_STREAM, "MAXLEN", "~", maxlen.as_str()]));
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
        r.register(
            "hemostat_alert_outbox",
            "Deliveries waiting in each sink's outbox",
            svc.metrics.outbox.clone(),
        );
        r.register(
            "hemostat_alert_delivery_attempts",
            "Requests made to each sink, by outcome (sent, retry, failed)",
            svc.metrics.attempts.clone(),
        );
    });
    let has_pager = sinks.iter().any(|s| s.kind.pager());
    let _ = svc.owner.set(ctx.identity.instance.clone());
    let _ = svc.sinks.set(sinks.clone());
    for sink in sinks {
        ctx.spawn_critical(
            "sink delivery",
            svc.clone().sink_worker(sink, ctx.shutdown.clone()),
        );
    }
    ctx.spawn_critical(
        "notification groups",
        svc.clone().flusher(ctx.shutdown.clone()),
    );
    ctx.spawn_critical(
        "silences",
        svc.clone().silence_refresher(ctx.shutdown.clone()),
    );

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
        ctx.spawn_critical("notification intake", async move {
            consume_batches(&bus, cfg, shutdown, |envs| {
                let svc = svc.clone();
                async move { svc.handle_batch(envs).await }
            })
            .await;
        });
    }
}
