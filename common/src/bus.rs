//! The bus: how agents talk, and the only place that knows how envelopes sit in Redis.
//!
//! Publishing writes each envelope twice in one MULTI/EXEC transaction: `XADD` to the durable
//! stream (`hemostat:stream:<name>`, trimmed with `MAXLEN ~`) and `PUBLISH` to the channel
//! (`hemostat:<name>`) for live viewers. Consuming reads the stream through a consumer group,
//! acknowledges only after the handler succeeded, reclaims entries a dead peer left pending
//! (`XAUTOCLAIM`), and parks undecodable or repeatedly failing entries in the dead-letter stream.
//!
//! Delivery is therefore at-least-once; handlers must be idempotent on the envelope id
//! ([`Bus::first_time`] helps).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{AsyncCommands, Value};
use tokio::sync::mpsc;

use crate::events::{
    Channel, DEAD_LETTER_STREAM, Envelope, STREAM_FIELD_ENVELOPE, STREAM_FIELD_EVENT_TYPE,
};
use crate::http::Health;
use crate::metrics::{AgentMetrics, ChannelLabel};
use crate::redact;
use crate::shutdown::Shutdown;

/// Largest raw payload copied into a dead-letter entry.
const DEAD_LETTER_PAYLOAD_LIMIT: usize = 64 * 1024;

/// What can go wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("shut down while waiting for redis")]
    Shutdown,
}

/// A handle to Redis for publishing and bookkeeping. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct Bus {
    client: redis::Client,
    conn: ConnectionManager,
    maxlen: u64,
    metrics: AgentMetrics,
    health: Health,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("maxlen", &self.maxlen).finish()
    }
}

/// Exponential backoff with a cap, for reconnect loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The delay to wait now; doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

/// Connects, retrying with backoff until Redis answers or `shutdown` fires. An agent started
/// before Redis (compose ordering, a Redis restart) waits rather than dies.
async fn connect_manager(
    client: &redis::Client,
    response_timeout: Duration,
    health: &Health,
    shutdown: &Shutdown,
) -> Result<ConnectionManager, BusError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match ConnectionManager::new_with_config(client.clone(), manager_config(response_timeout))
            .await
        {
            Ok(conn) => {
                health.ok("redis");
                return Ok(conn);
            }
            Err(e) => {
                health.degraded("redis", e.to_string());
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "redis not reachable");
                tokio::select! {
                    () = shutdown.cancelled() => return Err(BusError::Shutdown),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

impl Bus {
    /// Connects to `redis_url`, waiting for Redis if it is not up yet.
    pub async fn connect(
        redis_url: &str,
        maxlen: u64,
        metrics: AgentMetrics,
        health: Health,
        shutdown: &Shutdown,
    ) -> Result<Bus, BusError> {
        let client = redis::Client::open(redis_url)?;
        tracing::info!(redis = %redact::url(redis_url), "connecting to redis");
        let conn = connect_manager(&client, Duration::from_secs(5), &health, shutdown).await?;
        metrics.redis_up.set(1);
        Ok(Bus {
            client,
            conn,
            maxlen,
            metrics,
            health,
        })
    }

    /// The underlying client, for connections of one's own (pub/sub, blocking reads).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A clone of the shared, self-reconnecting connection.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn note<T>(&self, r: redis::RedisResult<T>) -> Result<T, BusError> {
        match r {
            Ok(v) => {
                self.metrics.redis_up.set(1);
                self.health.ok("redis");
                Ok(v)
            }
            Err(e) => {
                // Server-side errors (a wrong type, NOGROUP) say nothing about connectivity.
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    self.metrics.redis_up.set(0);
                    self.health.degraded("redis", e.to_string());
                }
                Err(e.into())
            }
        }
    }

    /// Publishes one envelope: XADD to its stream and PUBLISH to its channel, atomically.
    pub async fn publish(&self, env: &Envelope) -> Result<(), BusError> {
        self.publish_all(std::slice::from_ref(env)).await
    }

    /// Publishes many envelopes in one round trip and one transaction.
    pub async fn publish_all(&self, envs: &[Envelope]) -> Result<(), BusError> {
        if envs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for env in envs {
            self.add_publish(&mut pipe, env);
        }
        let mut conn = self.conn.clone();
        let r = pipe.query_async::<()>(&mut conn).await;
        self.note(r)?;
        for env in envs {
            self.metrics
                .events_out
                .get_or_create(&ChannelLabel::new(env.channel().name()))
                .inc();
        }
        Ok(())
    }

    /// Adds the two commands of one publish to a pipeline (for callers that batch more work
    /// into the same transaction, like the heartbeat's TTL key).
    pub fn add_publish(&self, pipe: &mut redis::Pipeline, env: &Envelope) {
        let json = env.to_json();
        let channel = env.channel();
        pipe.cmd("XADD")
            .arg(channel.stream())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg(STREAM_FIELD_EVENT_TYPE)
            .arg(env.event_type())
            .arg(STREAM_FIELD_ENVELOPE)
            .arg(&json)
            .ignore();
        pipe.cmd("PUBLISH").arg(channel.name()).arg(&json).ignore();
    }

    /// Runs a pipeline on the shared connection, recording connectivity.
    pub async fn run(&self, pipe: &redis::Pipeline) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let r = pipe.query_async::<()>(&mut conn).await;
        self.note(r)
    }

    /// True the first time `(scope, id)` is seen within `ttl`: the idempotency guard for
    /// at-least-once delivery.
    pub async fn first_time(&self, scope: &str, id: &str, ttl: Duration) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(format!("hemostat:seen:{scope}:{id}"))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await;
        Ok(self.note(r)?.is_some())
    }

    /// Publishes `envs` only if `marker` was not set yet, setting it (with `ttl`) in the same
    /// atomic step. This makes "handle an entry, publish the result" idempotent across
    /// redeliveries and replicas: the second attempt finds the marker and publishes nothing.
    /// Returns whether it published.
    pub async fn publish_once(
        &self,
        marker: &str,
        ttl: Duration,
        envs: &[Envelope],
    ) -> Result<bool, BusError> {
        self.publish_once_to(marker, ttl, envs, &[]).await
    }

    /// [`Bus::publish_once`], also appending every envelope to each of `extra_streams` (the
    /// audit stream) in the same atomic step.
    pub async fn publish_once_to(
        &self,
        marker: &str,
        ttl: Duration,
        envs: &[Envelope],
        extra_streams: &[&str],
    ) -> Result<bool, BusError> {
        self.publish_once_flagged(marker, ttl, envs, extra_streams, None)
            .await
    }

    /// [`Bus::publish_once_to`], also setting `flag` (key, value, expiry) in the same atomic
    /// step. A flag that readers of these messages will clear (the analyzer's "remediation in
    /// flight") must be set with them: set after them, it can land after the reader already
    /// cleared it, and then it stays until it expires.
    pub async fn publish_once_flagged(
        &self,
        marker: &str,
        ttl: Duration,
        envs: &[Envelope],
        extra_streams: &[&str],
        flag: Option<(&str, &str, Duration)>,
    ) -> Result<bool, BusError> {
        // A Lua script runs atomically: no other client sees the marker without the messages.
        // KEYS: the marker, then the flag if any. ARGV: ttl, maxlen, flag value, flag expiry
        // (ms), number of extra streams, the extra streams, then per envelope: stream,
        // event_type, json, channel.
        const SCRIPT: &str = r#"
            if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
            if KEYS[2] then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
            local extra = tonumber(ARGV[5])
            for i = 6 + extra, #ARGV, 4 do
                redis.call('XADD', ARGV[i], 'MAXLEN', '~', ARGV[2], '*',
                    'event_type', ARGV[i + 1], 'envelope', ARGV[i + 2])
                for j = 6, 5 + extra do
                    redis.call('XADD', ARGV[j], 'MAXLEN', '~', ARGV[2], '*',
                        'event_type', ARGV[i + 1], 'envelope', ARGV[i + 2])
                end
                redis.call('PUBLISH', ARGV[i + 3], ARGV[i + 2])
            end
            return 1
        "#;
        // Hashed once: `invoke_async` sends EVALSHA and loads the script only when Redis lacks it.
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let mut inv = COMPILED.key(marker);
        let (flag_value, flag_ms) = match flag {
            Some((key, value, expiry)) => {
                inv.key(key);
                (value, expiry.as_millis().max(1) as u64)
            }
            None => ("", 0),
        };
        inv.arg(ttl.as_secs().max(1))
            .arg(self.maxlen)
            .arg(flag_value)
            .arg(flag_ms)
            .arg(extra_streams.len());
        for s in extra_streams {
            inv.arg(*s);
        }
        for env in envs {
            inv.arg(env.channel().stream())
                .arg(env.event_type())
                .arg(env.to_json())
                .arg(env.channel().name());
        }
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = inv.invoke_async(&mut conn).await;
        let published = self.note(r)? == 1;
        if published {
            for env in envs {
                self.metrics
                    .events_out
                    .get_or_create(&ChannelLabel::new(env.channel().name()))
                    .inc();
            }
        }
        Ok(published)
    }

    /// The newest `count` envelopes of a stream, newest first (undecodable entries skipped).
    pub async fn recent(&self, channel: Channel, count: usize) -> Result<Vec<Envelope>, BusError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XREVRANGE")
            .arg(channel.stream())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await;
        Ok(self
            .note(r)?
            .ids
            .iter()
            .filter_map(|e| field_string(&e.map, STREAM_FIELD_ENVELOPE))
            .filter_map(|raw| Envelope::from_json(&raw).ok())
            .collect())
    }

    /// Parks a message in the dead-letter stream with the reason, and acks it in `group` (if
    /// it came from a stream), in one transaction.
    pub async fn dead_letter(
        &self,
        source: &str,
        group: Option<&str>,
        entry_id: Option<&str>,
        reason: &str,
        payload: &str,
    ) -> Result<(), BusError> {
        let mut cut = payload.len().min(DEAD_LETTER_PAYLOAD_LIMIT);
        while !payload.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD")
            .arg(DEAD_LETTER_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg("source")
            .arg(source)
            .arg("group")
            .arg(group.unwrap_or(""))
            .arg("entry_id")
            .arg(entry_id.unwrap_or(""))
            .arg("reason")
            .arg(reason)
            .arg("payload")
            .arg(&payload[..cut])
            .arg("at")
            .arg(chrono::Utc::now().to_rfc3339())
            .ignore();
        if let (Some(group), Some(id)) = (group, entry_id) {
            pipe.cmd("XACK").arg(source).arg(group).arg(id).ignore();
        }
        self.run(&pipe).await?;
        self.metrics
            .dead_lettered
            .get_or_create(&ChannelLabel::new(source))
            .inc();
        tracing::warn!(source, entry_id, reason, "dead-lettered");
        Ok(())
    }
}

/// A process-local copy of the newest `cap` envelopes of one stream, for handlers that look
/// at recent history on every message (the analyzer's crash-loop counts, the responder's "did a
/// person stop it" check, the alert agent's verdict lookup).
///
/// Every read still asks Redis, so a read sees everything published before it started, as
/// [`Bus::recent`] does; but it asks only for entries newer than the last one it holds
/// (`XREVRANGE stream + (last COUNT cap`), so each entry crosses the network and is decoded once
/// per process rather than once per message. Concurrent readers share one refresh: a reader
/// that waited for the lock while another refreshed uses that refresh if it began after the
/// reader arrived.
#[derive(Debug)]
pub struct RecentWindow {
    channel: Channel,
    cap: usize,
    /// Hands out increasing numbers to arriving readers and to refreshes.
    ticket: std::sync::atomic::AtomicU64,
    state: tokio::sync::Mutex<WindowState>,
}

#[derive(Debug, Default)]
struct WindowState {
    /// Stream id of the newest entry held.
    last: Option<String>,
    /// Ticket of the newest completed refresh.
    refreshed: u64,
    /// Newest first.
    entries: std::collections::VecDeque<Envelope>,
}

impl RecentWindow {
    pub fn new(channel: Channel, cap: usize) -> RecentWindow {
        RecentWindow {
            channel,
            cap: cap.max(1),
            ticket: std::sync::atomic::AtomicU64::new(1),
            state: tokio::sync::Mutex::default(),
        }
    }

    /// Brings the window up to date and runs `f` over its envelopes, newest first.
    pub async fn read<R>(
        &self,
        bus: &Bus,
        f: impl FnOnce(std::collections::vec_deque::Iter<'_, Envelope>) -> R,
    ) -> Result<R, BusError> {
        use std::sync::atomic::Ordering;
        let arrived = self.ticket.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state.lock().await;
        if state.refreshed <= arrived {
            let refresh = self.ticket.fetch_add(1, Ordering::SeqCst);
            let start = match &state.last {
                Some(id) => format!("({id}"),
                None => "-".to_owned(),
            };
            let mut conn = bus.conn.clone();
            let r: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XREVRANGE")
                .arg(self.channel.stream())
                .arg("+")
                .arg(&start)
                .arg("COUNT")
                .arg(self.cap)
                .query_async(&mut conn)
                .await;
            let fresh = bus.note(r)?.ids;
            if let Some(newest) = fresh.first() {
                state.last = Some(newest.id.clone());
            }
            // `fresh` is newest first: push the oldest of them to the front first.
            for entry in fresh.iter().rev() {
                if let Some(env) = field_string(&entry.map, STREAM_FIELD_ENVELOPE)
                    .and_then(|raw| Envelope::from_json(&raw).ok())
                {
                    state.entries.push_front(env);
                }
            }
            state.entries.truncate(self.cap);
            state.refreshed = refresh;
        }
        Ok(f(state.entries.iter()))
    }
}

/// Publishes in the background so that a slow or absent Redis never blocks detection. Alerts
/// wait for room ([`Outbox::send`]); samples are dropped and counted when full
/// ([`Outbox::try_send`]).
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Envelope>,
    metrics: AgentMetrics,
}

impl Outbox {
    /// Creates an outbox and the worker that drains it into `bus`. The worker ends once every
    /// clone of the outbox is dropped and what was queued is published (or `give_up` fires
    /// while Redis is unreachable).
    pub fn new(
        bus: Bus,
        capacity: usize,
        give_up: Shutdown,
    ) -> (Outbox, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(capacity);
        let metrics = bus.metrics.clone();
        let worker = drain(bus, rx, give_up);
        (Outbox { tx, metrics }, worker)
    }

    /// Queues an envelope, waiting while the queue is full. Returns false only when the worker
    /// is gone (shutting down).
    pub async fn send(&self, env: Envelope) -> bool {
        // Counted before it is queued so the worker never takes the gauge below zero.
        self.metrics.outbox_depth.inc();
        let ok = self.tx.send(env).await.is_ok();
        if !ok {
            self.metrics.outbox_depth.dec();
        }
        ok
    }

    /// Queues an envelope unless the queue is full, in which case it is dropped and counted.
    pub fn try_send(&self, env: Envelope) -> bool {
        self.metrics.outbox_depth.inc();
        match self.tx.try_send(env) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.outbox_depth.dec();
                self.metrics.outbox_dropped.inc();
                false
            }
        }
    }
}

/// Most envelopes published in one transaction.
const OUTBOX_BATCH: usize = 512;

async fn drain(bus: Bus, mut rx: mpsc::Receiver<Envelope>, give_up: Shutdown) {
    let mut batch = Vec::with_capacity(OUTBOX_BATCH);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    // The queue closes when every sender is dropped; then whatever is queued is still sent.
    while rx.recv_many(&mut batch, OUTBOX_BATCH).await > 0 {
        loop {
            match bus.publish_all(&batch).await {
                Ok(()) => {
                    bus.metrics.outbox_depth.dec_by(batch.len() as i64);
                    batch.clear();
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, queued = batch.len() + rx.len(), retry_in = ?delay,
                        "publish failed; keeping the batch and retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        // Shutting down with Redis away: what is left cannot be delivered.
                        () = give_up.cancelled(), if rx.is_closed() => {
                            tracing::error!(lost = batch.len() + rx.len(),
                                "giving up on unpublished envelopes at shutdown");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// How a consumer reads one stream.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub channel: Channel,
    /// The consumer group: one per agent kind (`analyzer`), so replicas share the work.
    pub group: String,
    /// This instance's name within the group.
    pub consumer: String,
    /// Most entries read per call.
    pub batch: usize,
    /// How long one read blocks waiting for entries.
    pub block: Duration,
    /// Entries pending longer than this (a crashed or stuck consumer) are reclaimed.
    pub claim_idle: Duration,
    /// How often to look for such entries.
    pub claim_every: Duration,
    /// After this many failed deliveries an entry is dead-lettered.
    pub max_deliveries: u64,
    /// Entries of one read handled at once. 1 keeps stream order; more keeps one slow
    /// entry (an LLM call) from holding up the rest.
    pub concurrency: usize,
}

impl ConsumerConfig {
    pub fn new(channel: Channel, group: &str, consumer: &str) -> ConsumerConfig {
        ConsumerConfig {
            channel,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            batch: 256,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_every: Duration::from_secs(5),
            max_deliveries: 5,
            concurrency: 1,
        }
    }
}

/// Consumes `cfg.channel`'s stream until `shutdown`, calling `handler` for each envelope.
///
/// An entry is acked when the handler returns `Ok`. On `Err` it stays pending and is retried
/// after `claim_idle` (by this or another consumer); after `max_deliveries` it is
/// dead-lettered. Undecodable entries are dead-lettered at once. Redis outages are waited out.
pub async fn consume<F, Fut>(bus: &Bus, cfg: ConsumerConfig, shutdown: Shutdown, handler: F)
where
    F: Fn(Envelope) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let stream = cfg.channel.stream();
    // Blocking reads get a connection of their own: on the shared one they would hold up
    // every other command for the length of the block.
    let Ok(mut conn) = connect_manager(
        bus.client(),
        cfg.block + Duration::from_secs(5),
        &bus.health,
        &shutdown,
    )
    .await
    else {
        return;
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // A brand-new group starts at the end of the stream (no replay of old history); a group
    // that vanished (Redis restarted without persistence) is recreated from the start of what
    // is there, which is only what was published since.
    let mut group_start = "$";
    let mut group_ready = false;
    let mut next_claim = tokio::time::Instant::now();

    while !shutdown.is_cancelled() {
        if !group_ready {
            match ensure_group(&mut conn, stream, &cfg.group, group_start).await {
                Ok(()) => group_ready = true,
                Err(e) => {
                    let _ = bus.note::<()>(Err(e));
                    if wait(&shutdown, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
            }
        }

        if tokio::time::Instant::now() >= next_claim {
            next_claim = tokio::time::Instant::now() + cfg.claim_every;
            match reclaim(&mut conn, &cfg).await {
                Ok(entries) => process_all(bus, &cfg, &conn, entries, &handler).await,
                Err(e) => tracing::debug!(error = %e, stream, "reclaim failed"),
            }
        }

        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&cfg.group)
            .arg(&cfg.consumer)
            .arg("COUNT")
            .arg(cfg.batch)
            .arg("BLOCK")
            .arg(cfg.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(stream)
            .arg(">");
        let read = cmd.query_async::<Option<StreamReadReply>>(&mut conn);
        let reply = tokio::select! {
            // Entries read but not yet handled stay pending and are reclaimed by a peer.
            () = shutdown.cancelled() => break,
            r = read => r,
        };
        match bus.note(reply) {
            Ok(reply) => {
                backoff.reset();
                let entries = reply
                    .map(|r| r.keys)
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .collect();
                process_all(bus, &cfg, &conn, entries, &handler).await;
            }
            Err(BusError::Redis(e)) if e.code() == Some("NOGROUP") => {
                tracing::warn!(stream, group = %cfg.group, "consumer group vanished; recreating");
                group_ready = false;
                group_start = "0";
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, stream, retry_in = ?delay, "stream read failed");
                if wait(&shutdown, delay).await {
                    break;
                }
            }
        }
    }
}

/// Sleeps unless shut down first; true when shut down.
async fn wait(shutdown: &Shutdown, d: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

async fn ensure_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    start: &str,
) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = conn.xgroup_create_mkstream(stream, group, start).await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

async fn reclaim(
    conn: &mut ConnectionManager,
    cfg: &ConsumerConfig,
) -> redis::RedisResult<Vec<StreamId>> {
    let mut cursor = "0-0".to_owned();
    let mut out = Vec::new();
    // Bounded: at most a few pages per round, the rest next round.
    for _ in 0..4 {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(cfg.channel.stream())
            .arg(&cfg.group)
            .arg(&cfg.consumer)
            .arg(cfg.claim_idle.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(cfg.batch)
            .query_async(conn)
            .await?;
        // Entries deleted from the stream (trimmed) while pending can only be acked away.
        for id in &reply.deleted_ids {
            let _: redis::RedisResult<()> =
                conn.xack(cfg.channel.stream(), &cfg.group, &[id]).await;
        }
        if !reply.claimed.is_empty() {
            tracing::info!(
                count = reply.claimed.len(),
                stream = cfg.channel.stream(),
                "reclaimed entries left pending"
            );
        }
        out.extend(reply.claimed);
        if reply.next_stream_id == "0-0" {
            break;
        }
        cursor = reply.next_stream_id;
    }
    Ok(out)
}

fn field_string(map: &HashMap<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Handles a batch of entries, `cfg.concurrency` at a time.
async fn process_all<F, Fut>(
    bus: &Bus,
    cfg: &ConsumerConfig,
    conn: &ConnectionManager,
    entries: Vec<StreamId>,
    handler: &F,
) where
    F: Fn(Envelope) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    use futures::StreamExt as _;
    futures::stream::iter(entries)
        .for_each_concurrent(cfg.concurrency.max(1), |entry| {
            let mut conn = conn.clone();
            async move { process(bus, cfg, &mut conn, entry, handler).await }
        })
        .await;
}

async fn process<F, Fut>(
    bus: &Bus,
    cfg: &ConsumerConfig,
    conn: &mut ConnectionManager,
    entry: StreamId,
    handler: &F,
) where
    F: Fn(Envelope) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let stream = cfg.channel.stream();
    let raw = field_string(&entry.map, STREAM_FIELD_ENVELOPE);
    let decoded = match &raw {
        None if entry.map.contains_key(STREAM_FIELD_ENVELOPE) => {
            Err("the 'envelope' field is not UTF-8 text".to_owned())
        }
        None => Err("entry has no 'envelope' field".to_owned()),
        Some(raw) => Envelope::from_json(raw).map_err(|e| format!("undecodable envelope: {e}")),
    };
    let env = match decoded {
        Ok(env) => env,
        Err(reason) => {
            let payload = raw.unwrap_or_else(|| format!("{:?}", entry.map));
            if let Err(e) = bus
                .dead_letter(stream, Some(&cfg.group), Some(&entry.id), &reason, &payload)
                .await
            {
                tracing::warn!(error = %e, entry = %entry.id, "could not dead-letter; will retry");
            }
            return;
        }
    };
    let label = ChannelLabel::new(stream);
    bus.metrics.events_in.get_or_create(&label).inc();
    let id = env.id.clone();
    match handler(env).await {
        Ok(()) => {
            let r: redis::RedisResult<()> = conn.xack(stream, &cfg.group, &[&entry.id]).await;
            if let Err(e) = r {
                // Not acked means redelivered later; the handler is idempotent on the id.
                tracing::warn!(error = %e, entry = %entry.id, "ack failed");
            }
        }
        Err(err) => {
            bus.metrics.handler_errors.get_or_create(&label).inc();
            let deliveries = delivery_count(conn, stream, &cfg.group, &entry.id)
                .await
                .unwrap_or(1);
            tracing::warn!(error = format!("{err:#}"), event_id = %id, entry = %entry.id,
                deliveries, "handler failed");
            if deliveries >= cfg.max_deliveries {
                let reason = format!("handler failed {deliveries} times: {err:#}");
                let payload = raw.unwrap_or_default();
                if let Err(e) = bus
                    .dead_letter(stream, Some(&cfg.group), Some(&entry.id), &reason, &payload)
                    .await
                {
                    tracing::warn!(error = %e, entry = %entry.id, "could not dead-letter");
                }
            }
        }
    }
}

async fn delivery_count(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    id: &str,
) -> redis::RedisResult<u64> {
    let reply: StreamPendingCountReply = conn.xpending_count(stream, group, id, id, 1).await?;
    Ok(reply
        .ids
        .first()
        .map(|p| p.times_delivered as u64)
        .unwrap_or(1))
}

/// Subscribes to pub/sub `patterns` (e.g. `hemostat:*`) and forwards `(channel, payload)` pairs,
/// reconnecting with backoff whenever the connection drops, until `shutdown`. Messages
/// published while disconnected are not seen here: whoever needs all of them reads the
/// streams.
pub fn subscribe(
    client: redis::Client,
    patterns: Vec<String>,
    shutdown: Shutdown,
) -> mpsc::Receiver<(String, String)> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            let session = async {
                let mut pubsub = client.get_async_pubsub().await?;
                for p in &patterns {
                    pubsub.psubscribe(p).await?;
                }
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                () = shutdown.cancelled() => return,
                r = session => r,
            };
            match pubsub {
                Ok(pubsub) => {
                    backoff.reset();
                    tracing::debug!(?patterns, "subscribed");
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            () = shutdown.cancelled() => return,
                            m = futures::StreamExt::next(&mut messages) => m,
                        };
                        let Some(msg) = msg else { break };
                        let payload: String = msg.get_payload().unwrap_or_default();
                        if tx
                            .send((msg.get_channel_name().to_owned(), payload))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    tracing::warn!("pub/sub connection lost; resubscribing");
                }
                Err(e) => tracing::warn!(error = %e, "pub/sub connect failed"),
            }
            if wait(&shutdown, backoff.next_delay()).await {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let seen: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seen, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
