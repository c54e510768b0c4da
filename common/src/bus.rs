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
use tokio::sync::{Notify, mpsc, watch};

use crate::events::{
    Channel, DEAD_LETTER_STREAM, Envelope, STREAM_FIELD_ENVELOPE, STREAM_FIELD_EVENT_TYPE,
};
use crate::http::Health;
use crate::metrics::{AgentMetrics, ChannelLabel};
use crate::redact;
use crate::sentinel::{self, Sentinels};
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

/// How long streams keep their entries, besides their length cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Alerts, verdicts, results, escalations, the audit, dead letters.
    pub default: Duration,
    /// The high-volume streams: metrics and heartbeats.
    pub samples: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            default: Duration::from_secs(7 * 86_400),
            samples: Duration::from_secs(3600),
        }
    }
}

impl Retention {
    /// How long `stream` keeps its entries.
    pub fn of(&self, stream: &str) -> Duration {
        if stream == Channel::Metrics.stream() || stream == Channel::Heartbeat.stream() {
            self.samples
        } else {
            self.default
        }
    }
}

/// The default [`ConsumerConfig::max_entry_bytes`].
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// Most entries the dead-letter stream keeps: each may carry up to 64 KiB of payload.
const DEAD_LETTER_MAXLEN: u64 = 1000;

/// A state change applied in the same atomic step as a publish ([`Bus::publish_once_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A Redis command, as its arguments (`["ZREM", key, member]`).
    Cmd(Vec<String>),
    /// `[key, value]`: deletes `key` only while it holds `value` (a lock released by its owner).
    DelIfEq(Vec<String>),
}

impl Op {
    /// A command from its arguments.
    pub fn cmd<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> Op {
        Op::Cmd(args.into_iter().map(|a| a.as_ref().to_owned()).collect())
    }

    /// Deletes `key` if it holds `value`.
    pub fn del_if_eq(key: &str, value: &str) -> Op {
        Op::DelIfEq(vec![key.to_owned(), value.to_owned()])
    }
}

/// Where Redis is: one server at `url`, or, with sentinels, whichever server they name as
/// master, reached with `url`'s user, password and database.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    /// `REDIS_URL`. With sentinels only its credentials and database are used.
    pub url: String,
    /// The sentinels to ask for the master, if Redis runs under Sentinel.
    pub sentinels: Option<Sentinels>,
}

impl RedisTarget {
    /// A single Redis server, no Sentinel.
    pub fn direct(url: &str) -> RedisTarget {
        RedisTarget {
            url: url.to_owned(),
            sentinels: None,
        }
    }
}

/// The master the bus talks to now: its client, its shared connection, and its address as
/// the sentinels named it (`None` without Sentinel).
struct Current {
    client: redis::Client,
    conn: ConnectionManager,
    master: Option<String>,
}

/// A handle to Redis for publishing and bookkeeping. Cheap to clone; reconnects by itself.
///
/// Under Sentinel the handle follows failovers: a task asks the sentinels who the master is
/// every second (and at once when a command fails with a connection error or `READONLY`) and,
/// when the answer changes, swaps in a client and connection to the new master. Everything
/// that holds a connection of its own ([`consume`]'s blocking reads, [`subscribe_bus`])
/// watches for the swap and reconnects.
#[derive(Clone)]
pub struct Bus {
    current: watch::Receiver<std::sync::Arc<Current>>,
    /// Keeps the watch open when no follower task owns the sender (no Sentinel).
    _keep: Option<std::sync::Arc<watch::Sender<std::sync::Arc<Current>>>>,
    /// Wakes the follower early: a command just failed in a way a failover would explain.
    kick: Option<std::sync::Arc<Notify>>,
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

/// Fires each time a [`Bus`] starts following a new master. Never fires without Sentinel.
pub struct MasterChanges(watch::Receiver<std::sync::Arc<Current>>);

impl MasterChanges {
    /// Waits for the next change of master; pends forever once the bus stops following.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Asks the sentinels for the master until one answers or `shutdown` fires.
async fn resolve_master(
    sentinels: &Sentinels,
    health: &Health,
    shutdown: &Shutdown,
) -> Result<(String, u16), BusError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match sentinels.resolve().await {
            Ok(found) => return Ok(found),
            Err(e) => {
                health.degraded("redis", e.clone());
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "redis master not known yet");
                if wait(shutdown, delay).await {
                    return Err(BusError::Shutdown);
                }
            }
        }
    }
}

fn addr_of(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// Follows the master under Sentinel until `shutdown` or until every [`Bus`] is gone: asks
/// every second, or at once when kicked, and swaps in a new master when the answer changes.
async fn follow_master(
    target: RedisTarget,
    sentinels: Sentinels,
    tx: watch::Sender<std::sync::Arc<Current>>,
    kick: std::sync::Arc<Notify>,
    health: Health,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            // Nobody holds the bus any more.
            () = tx.closed() => return,
            () = kick.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (host, port) = match sentinels.resolve().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the sentinels for the redis master");
                continue;
            }
        };
        let addr = addr_of(&host, port);
        if tx.borrow().master.as_deref() == Some(addr.as_str()) {
            continue;
        }
        let url = sentinel::master_url(&target.url, &host, port);
        let client = match redis::Client::open(url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, master = %addr, "new redis master unusable");
                continue;
            }
        };
        // One bounded attempt: if the new master does not answer yet the next round retries,
        // and commands meanwhile keep failing on the old one rather than hanging.
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            ConnectionManager::new_with_config(
                client.clone(),
                manager_config(Duration::from_secs(5)),
            ),
        )
        .await;
        match conn {
            Ok(Ok(conn)) => {
                let from = tx.borrow().master.clone().unwrap_or_default();
                tracing::warn!(master = %addr, previous = %from, "redis master changed; following it");
                health.ok("redis");
                tx.send_replace(std::sync::Arc::new(Current {
                    client,
                    conn,
                    master: Some(addr),
                }));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, master = %addr, "new redis master not reachable yet")
            }
            Err(_) => tracing::warn!(master = %addr, "new redis master did not answer within 3s"),
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
        Bus::connect_to(
            &RedisTarget::direct(redis_url),
            maxlen,
            metrics,
            health,
            shutdown,
        )
        .await
    }

    /// Connects to `target`, waiting for Redis (and, under Sentinel, for a sentinel that
    /// names the master) if it is not up yet. Under Sentinel the bus then follows failovers
    /// until `shutdown`.
    /// The bus of a one-off command (`silence`, `maintenance`, `reset-breaker`): the agent's
    /// Redis settings, metrics and health of its own that nobody reads.
    pub async fn for_command(
        common: &crate::config::CommonArgs,
        shutdown: &Shutdown,
    ) -> Result<Bus, BusError> {
        Bus::connect_to(
            &common.redis_target(),
            common.stream_maxlen,
            AgentMetrics::default(),
            Health::default(),
            shutdown,
        )
        .await
    }

    pub async fn connect_to(
        target: &RedisTarget,
        maxlen: u64,
        metrics: AgentMetrics,
        health: Health,
        shutdown: &Shutdown,
    ) -> Result<Bus, BusError> {
        let Some(sentinels) = target.sentinels.clone() else {
            let client = redis::Client::open(target.url.as_str())?;
            tracing::info!(redis = %redact::url(&target.url), "connecting to redis");
            let conn = connect_manager(&client, Duration::from_secs(5), &health, shutdown).await?;
            metrics.redis_up.set(1);
            let (tx, rx) = watch::channel(std::sync::Arc::new(Current {
                client,
                conn,
                master: None,
            }));
            return Ok(Bus {
                current: rx,
                _keep: Some(std::sync::Arc::new(tx)),
                kick: None,
                maxlen,
                metrics,
                health,
            });
        };
        tracing::info!(
            sentinels = ?sentinels.addrs,
            master_name = %sentinels.master,
            "asking the sentinels for the redis master"
        );
        // The master can change between asking and connecting: ask again until a connection
        // to the named master stands.
        let (client, conn, addr) = loop {
            let (host, port) = resolve_master(&sentinels, &health, shutdown).await?;
            let url = sentinel::master_url(&target.url, &host, port);
            let client = redis::Client::open(url.as_str())?;
            let addr = addr_of(&host, port);
            tracing::info!(redis = %redact::url(&url), master = %addr, "connecting to the redis master");
            let attempt = tokio::time::timeout(
                Duration::from_secs(3),
                ConnectionManager::new_with_config(
                    client.clone(),
                    manager_config(Duration::from_secs(5)),
                ),
            )
            .await;
            match attempt {
                Ok(Ok(conn)) => break (client, conn, addr),
                Ok(Err(e)) => {
                    health.degraded("redis", e.to_string());
                    tracing::warn!(error = %e, master = %addr, "redis master not reachable");
                }
                Err(_) => tracing::warn!(master = %addr, "redis master did not answer within 3s"),
            }
            if wait(shutdown, Duration::from_millis(500)).await {
                return Err(BusError::Shutdown);
            }
        };
        health.ok("redis");
        metrics.redis_up.set(1);
        tracing::info!(master = %addr, "following the redis master named by the sentinels");
        let (tx, rx) = watch::channel(std::sync::Arc::new(Current {
            client,
            conn,
            master: Some(addr),
        }));
        let kick = std::sync::Arc::new(Notify::new());
        tokio::spawn(follow_master(
            target.clone(),
            sentinels,
            tx,
            kick.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        Ok(Bus {
            current: rx,
            _keep: None,
            kick: Some(kick),
            maxlen,
            metrics,
            health,
        })
    }

    /// A client for the current master, for connections of one's own (pub/sub, blocking
    /// reads). Under Sentinel it goes stale at a failover: long-lived holders watch
    /// [`Bus::master_changes`].
    pub fn client(&self) -> redis::Client {
        self.current.borrow().client.clone()
    }

    /// The master's address as the sentinels named it; `None` without Sentinel.
    pub fn master(&self) -> Option<String> {
        self.current.borrow().master.clone()
    }

    /// Resolves each time the bus starts following a new master (never without Sentinel).
    pub fn master_changes(&self) -> MasterChanges {
        let mut rx = self.current.clone();
        rx.mark_unchanged();
        MasterChanges(rx)
    }

    /// The most entries a stream keeps (`HEMOSTAT_STREAM_MAXLEN`).
    pub fn maxlen(&self) -> u64 {
        self.maxlen
    }

    /// A clone of the shared, self-reconnecting connection to the current master.
    pub fn connection(&self) -> ConnectionManager {
        self.current.borrow().conn.clone()
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
                let connection = e.is_io_error() || e.is_timeout() || e.is_connection_dropped();
                if connection {
                    self.metrics.redis_up.set(0);
                    self.health.degraded("redis", e.to_string());
                }
                // A dead master or one demoted to replica: ask the sentinels now rather than
                // at the next round. Nothing is retried here; the caller decides.
                if (connection || e.code() == Some("READONLY"))
                    && let Some(kick) = &self.kick
                {
                    kick.notify_one();
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
        let mut conn = self.connection();
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
        let mut conn = self.connection();
        let r = pipe.query_async::<()>(&mut conn).await;
        self.note(r)
    }

    /// True the first time `(scope, id)` is seen within `ttl`: the idempotency guard for
    /// at-least-once delivery.
    pub async fn first_time(&self, scope: &str, id: &str, ttl: Duration) -> Result<bool, BusError> {
        let mut conn = self.connection();
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
        let mut ops = Vec::new();
        if let Some((key, value, expiry)) = flag {
            ops.push(Op::cmd([
                "SET",
                key,
                value,
                "PX",
                &expiry.as_millis().max(1).to_string(),
            ]));
        }
        self.publish_once_with(marker, ttl, envs, extra_streams, &ops)
            .await
    }

    /// The general form of [`Bus::publish_once`]: if `marker` is not set yet, sets it (with
    /// `ttl`), publishes `envs` (each also appended to every one of `extra_streams`) and applies
    /// `ops`, all in one Lua script, so no other client ever sees one without the others. This
    /// is how a result and the state change it stands for (a job leaving a queue, a lock
    /// released by its owner) are recorded together. Returns whether it published.
    pub async fn publish_once_with(
        &self,
        marker: &str,
        ttl: Duration,
        envs: &[Envelope],
        extra_streams: &[&str],
        ops: &[Op],
    ) -> Result<bool, BusError> {
        // ARGV: ttl, maxlen, number of extra streams, the extra streams, number of envelopes,
        // per envelope (stream, event_type, json, channel), then per op: kind, argument count,
        // the arguments. Kind `c` runs the arguments as a command; `d` deletes key
        // ARGV[i] only if it holds ARGV[i+1].
        const SCRIPT: &str = r#"
            if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
            local extra = tonumber(ARGV[3])
            local i = 4 + extra
            local n = tonumber(ARGV[i])
            i = i + 1
            for _ = 1, n do
                redis.call('XADD', ARGV[i], 'MAXLEN', '~', ARGV[2], '*',
                    'event_type', ARGV[i + 1], 'envelope', ARGV[i + 2])
                for j = 4, 3 + extra do
                    redis.call('XADD', ARGV[j], 'MAXLEN', '~', ARGV[2], '*',
                        'event_type', ARGV[i + 1], 'envelope', ARGV[i + 2])
                end
                redis.call('PUBLISH', ARGV[i + 3], ARGV[i + 2])
                i = i + 4
            end
            while i <= #ARGV do
                local kind = ARGV[i]
                local argc = tonumber(ARGV[i + 1])
                local args = {}
                for j = 1, argc do args[j] = ARGV[i + 1 + j] end
                if kind == 'c' then
                    redis.call(unpack(args))
                elseif kind == 'd' then
                    if redis.call('GET', args[1]) == args[2] then redis.call('DEL', args[1]) end
                end
                i = i + 2 + argc
            end
            return 1
        "#;
        // Hashed once: `invoke_async` sends EVALSHA and loads the script only when Redis lacks it.
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let mut inv = COMPILED.key(marker);
        inv.arg(ttl.as_secs().max(1))
            .arg(self.maxlen)
            .arg(extra_streams.len());
        for s in extra_streams {
            inv.arg(*s);
        }
        inv.arg(envs.len());
        for env in envs {
            inv.arg(env.channel().stream())
                .arg(env.event_type())
                .arg(env.to_json())
                .arg(env.channel().name());
        }
        for op in ops {
            let (kind, args) = match op {
                Op::Cmd(args) => ("c", args.as_slice()),
                Op::DelIfEq(args) => ("d", args.as_slice()),
            };
            inv.arg(kind).arg(args.len());
            for a in args {
                inv.arg(a);
            }
        }
        let mut conn = self.connection();
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

    /// Trims every `streams` entry older than its retention (`XTRIM MINID`, exact: once a
    /// minute the cost is small), so memory is bounded by age as well as by each stream's
    /// length cap. Idempotent: each agent runs it once a minute on the streams it writes (see
    /// [`trim_forever`] and [`crate::acl::trimmed_by`]).
    pub async fn trim(&self, streams: &[&str], retention: Retention) -> Result<(), BusError> {
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let mut pipe = redis::pipe();
        for s in streams {
            let min = now.saturating_sub(retention.of(s).as_millis() as u64);
            pipe.cmd("XTRIM").arg(*s).arg("MINID").arg(min).ignore();
        }
        self.run(&pipe).await
    }

    /// Redis's memory use and its limit (`used_memory`, `maxmemory`; 0 when unlimited).
    pub async fn memory(&self) -> Result<(u64, u64), BusError> {
        let mut conn = self.connection();
        let r: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await;
        let info = self.note(r)?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("used_memory"), field("maxmemory")))
    }

    /// The newest `count` envelopes of a stream, newest first (undecodable entries skipped).
    pub async fn recent(&self, channel: Channel, count: usize) -> Result<Vec<Envelope>, BusError> {
        let mut conn = self.connection();
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

    /// Counts a dead letter written by a caller's own atomic step (not through
    /// [`Bus::dead_letter`]), so `hemostat_dead_lettered_total` sees every one.
    pub fn count_dead_letter(&self, source: &str) {
        self.metrics
            .dead_lettered
            .get_or_create(&ChannelLabel::new(source))
            .inc();
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
            .arg(self.maxlen.min(DEAD_LETTER_MAXLEN))
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
            let mut conn = bus.connection();
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
/// ([`Outbox::try_send`]). Room is bounded twice: by count (the channel's capacity) and by the
/// bytes of the envelopes held, so a Redis outage costs a bounded amount of memory whatever
/// the size of the host.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<(Envelope, usize)>,
    metrics: AgentMetrics,
    bytes: std::sync::Arc<OutboxBytes>,
}

/// Bytes held by an outbox, and a wake-up for senders waiting for room.
#[derive(Debug)]
struct OutboxBytes {
    held: std::sync::atomic::AtomicUsize,
    max: usize,
    freed: tokio::sync::Notify,
}

impl OutboxBytes {
    fn room_for(&self, n: usize) -> bool {
        let held = self.held.load(std::sync::atomic::Ordering::SeqCst);
        // An envelope larger than the whole budget still goes, alone.
        held == 0 || held + n <= self.max
    }

    fn take(&self, n: usize) {
        self.held.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        self.freed.notify_waiters();
    }
}

impl Outbox {
    /// Creates an outbox holding at most `capacity` envelopes and `max_bytes` of them, and the
    /// worker that drains it into `bus`. The worker ends once every clone of the outbox is
    /// dropped and what was queued is published (or `give_up` fires while Redis is
    /// unreachable).
    pub fn new(
        bus: Bus,
        capacity: usize,
        max_bytes: usize,
        give_up: Shutdown,
    ) -> (Outbox, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(capacity);
        let metrics = bus.metrics.clone();
        let bytes = std::sync::Arc::new(OutboxBytes {
            held: std::sync::atomic::AtomicUsize::new(0),
            max: max_bytes.max(1),
            freed: tokio::sync::Notify::new(),
        });
        let worker = drain(bus, rx, give_up, bytes.clone());
        (Outbox { tx, metrics, bytes }, worker)
    }

    /// Queues an envelope, waiting while the queue is full (by count or by bytes). Returns
    /// false only when the worker is gone (shutting down).
    pub async fn send(&self, env: Envelope) -> bool {
        let size = env.to_json().len();
        loop {
            let freed = self.bytes.freed.notified();
            if self.bytes.room_for(size) {
                break;
            }
            if self.tx.is_closed() {
                return false;
            }
            // Woken when the worker publishes; checked again at least once a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), freed).await;
        }
        // Counted before it is queued so the worker never takes the gauges below zero.
        self.metrics.outbox_depth.inc();
        self.metrics.outbox_bytes.inc_by(size as i64);
        self.bytes.take(size);
        let ok = self.tx.send((env, size)).await.is_ok();
        if !ok {
            self.metrics.outbox_depth.dec();
            self.metrics.outbox_bytes.dec_by(size as i64);
            self.bytes.give_back(size);
        }
        ok
    }

    /// Queues an envelope unless the queue is full (by count or by bytes), in which case it is
    /// dropped and counted.
    pub fn try_send(&self, env: Envelope) -> bool {
        let size = env.to_json().len();
        if !self.bytes.room_for(size) {
            self.metrics.outbox_dropped.inc();
            return false;
        }
        self.metrics.outbox_depth.inc();
        self.metrics.outbox_bytes.inc_by(size as i64);
        self.bytes.take(size);
        match self.tx.try_send((env, size)) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.outbox_depth.dec();
                self.metrics.outbox_bytes.dec_by(size as i64);
                self.bytes.give_back(size);
                self.metrics.outbox_dropped.inc();
                false
            }
        }
    }
}

/// Most envelopes published in one transaction.
const OUTBOX_BATCH: usize = 512;

async fn drain(
    bus: Bus,
    mut rx: mpsc::Receiver<(Envelope, usize)>,
    give_up: Shutdown,
    bytes: std::sync::Arc<OutboxBytes>,
) {
    let mut batch: Vec<(Envelope, usize)> = Vec::with_capacity(OUTBOX_BATCH);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    // The queue closes when every sender is dropped; then whatever is queued is still sent.
    while rx.recv_many(&mut batch, OUTBOX_BATCH).await > 0 {
        let envs: Vec<Envelope> = batch.iter().map(|(e, _)| e.clone()).collect();
        let size: usize = batch.iter().map(|(_, n)| n).sum();
        loop {
            match bus.publish_all(&envs).await {
                Ok(()) => {
                    bus.metrics.outbox_depth.dec_by(batch.len() as i64);
                    bus.metrics.outbox_bytes.dec_by(size as i64);
                    bytes.give_back(size);
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

/// Every stream hemostat writes: what [`trim_forever`] keeps within its retention.
pub fn all_streams() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Channel::ALL.iter().map(|c| c.stream()).collect();
    v.push(DEAD_LETTER_STREAM);
    v.push(crate::events::AUDIT_STREAM);
    v
}

/// Redis above this share of its `maxmemory` marks the agent degraded.
pub const MEMORY_DEGRADED_AT: f64 = 0.8;

/// Once a minute until shutdown: trims `streams` to their retention, and watches Redis's
/// memory: above [`MEMORY_DEGRADED_AT`] of `maxmemory` the agent reports itself degraded
/// (`redis_memory`), since at the limit Redis refuses writes (hemostat's compose file sets
/// `noeviction`: nothing is evicted, a lock or a consumer group least of all).
pub async fn trim_forever(
    bus: Bus,
    streams: Vec<&'static str>,
    retention: Retention,
    health: Health,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = bus.trim(&streams, retention).await {
            tracing::debug!(error = %e, "could not trim streams");
        }
        match bus.memory().await {
            Ok((used, max)) => {
                bus.metrics.redis_used_memory.set(used as i64);
                bus.metrics.redis_max_memory.set(max as i64);
                match memory_verdict(used, max) {
                    Some(why) => health.degraded("redis_memory", why),
                    None => health.ok("redis_memory"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read redis memory"),
        }
    }
}

/// `Some(why)` when Redis is above [`MEMORY_DEGRADED_AT`] of its limit.
pub fn memory_verdict(used: u64, max: u64) -> Option<String> {
    if max == 0 || (used as f64) < MEMORY_DEGRADED_AT * max as f64 {
        return None;
    }
    Some(format!(
        "redis uses {} MiB of its {} MiB maxmemory ({:.0} %); at the limit it refuses writes",
        used / (1024 * 1024),
        max / (1024 * 1024),
        used as f64 * 100.0 / max as f64
    ))
}

/// What should happen to a stream entry once its handler is done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Its effect is recorded: acknowledge it.
    Ack,
    /// Not handled this time (Redis or Docker away, a peer busy with it): leave it pending, to
    /// be delivered again after `claim_idle`, and dead-lettered after `max_deliveries`.
    Retry(String),
    /// It can never be handled: park it in the dead-letter stream with this reason, now.
    DeadLetter(String),
}

impl From<anyhow::Result<()>> for Disposition {
    fn from(r: anyhow::Result<()>) -> Disposition {
        match r {
            Ok(()) => Disposition::Ack,
            Err(e) => Disposition::Retry(format!("{e:#}")),
        }
    }
}

impl From<()> for Disposition {
    fn from((): ()) -> Disposition {
        Disposition::Ack
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
    /// Most entries read per call (never more than there are free handler slots).
    pub batch: usize,
    /// How long one read blocks waiting for entries.
    pub block: Duration,
    /// Entries pending longer than this (a crashed or stuck consumer) are reclaimed.
    pub claim_idle: Duration,
    /// How often to look for such entries.
    pub claim_every: Duration,
    /// After this many deliveries without an ack an entry is dead-lettered, whether its
    /// handler failed or its consumer died while handling it.
    pub max_deliveries: u64,
    /// Entries handled at once. Each slot is freed the moment its entry is done, and the next
    /// read asks for as many entries as there are free slots, so one slow entry never holds up
    /// the rest. 1 keeps stream order.
    pub concurrency: usize,
    /// Where a group that does not exist yet starts: this long before now. What was published
    /// before the consumer first started (an alert sent while the analyzer was still starting)
    /// is read; older history is not replayed.
    pub new_group_lookback: Duration,
    /// An entry whose envelope is larger than this is dead-lettered unread (an envelope of
    /// hemostat's own is a few KB; a metrics round at 100 containers ~32 KB).
    pub max_entry_bytes: usize,
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
            new_group_lookback: Duration::from_secs(600),
            max_entry_bytes: MAX_ENTRY_BYTES,
        }
    }
}

type Read = std::pin::Pin<
    Box<dyn Future<Output = redis::RedisResult<Option<StreamReadReply>>> + Send + 'static>,
>;

/// Consumes `cfg.channel`'s stream until `shutdown`, calling `handler` for each envelope.
///
/// Reading is not handling: the loop holds `cfg.concurrency` slots, reads only as many entries
/// as there are free slots, and hands each to its own handler future; an entry is settled
/// (acked, left pending or dead-lettered, as its [`Disposition`] says) the moment its handler
/// returns, whatever the others are doing. Entries a dead peer left pending are reclaimed every
/// `claim_every`, into free slots. Undecodable entries are dead-lettered at once. Redis outages
/// are waited out. At shutdown no new entry is read; the read already sent is waited for (its
/// entries would otherwise sit unhandled until reclaimed) and everything in hand is finished.
pub async fn consume<F, Fut, R>(bus: &Bus, cfg: ConsumerConfig, shutdown: Shutdown, handler: F)
where
    F: Fn(Envelope) -> Fut,
    Fut: Future<Output = R>,
    R: Into<Disposition>,
{
    let (cfg, handler) = (&cfg, &handler);
    drive(bus, cfg, shutdown, false, |entries| async move {
        for entry in entries {
            process(bus, cfg, entry, handler).await;
        }
    })
    .await;
}

/// [`consume`], many entries at a time: each read takes up to `cfg.batch` entries and hands
/// them, in stream order, to one call of `handler`, which returns one [`Disposition`] per
/// envelope, in the same order. `cfg.concurrency` is how many batches are in hand at once (1
/// keeps stream order across batches). The acks of a batch are one `XACK`. A handler that
/// panics on a batch is called again with each of its envelopes alone, so only the entry that
/// triggers the panic is parked (handlers are idempotent on the envelope id, as everywhere).
pub async fn consume_batches<F, Fut>(bus: &Bus, cfg: ConsumerConfig, shutdown: Shutdown, handler: F)
where
    F: Fn(Vec<Envelope>) -> Fut,
    Fut: Future<Output = Vec<Disposition>>,
{
    let (cfg, handler) = (&cfg, &handler);
    drive(bus, cfg, shutdown, true, |entries| {
        process_batch(bus, cfg, entries, handler)
    })
    .await;
}

/// The read loop of [`consume`] and [`consume_batches`]: `dispatch` gets one entry at a time,
/// or (`batched`) all of one read's entries.
async fn drive<D, Fut>(
    bus: &Bus,
    cfg: &ConsumerConfig,
    shutdown: Shutdown,
    batched: bool,
    dispatch: D,
) where
    D: Fn(Vec<StreamId>) -> Fut,
    Fut: Future<Output = ()>,
{
    use futures::StreamExt as _;
    let stream = cfg.channel.stream();
    // Blocking reads get a connection of their own: on the shared one they would hold up
    // every other command (acks included) for the length of the block.
    let mut master_changes = bus.master_changes();
    let Ok(mut read_conn) = connect_manager(
        &bus.client(),
        cfg.block + Duration::from_secs(5),
        &bus.health,
        &shutdown,
    )
    .await
    else {
        return;
    };
    let slots = cfg.concurrency.max(1);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // A group that vanished (Redis restarted without persistence) is recreated from the start
    // of what the new stream holds, which is only what was published since.
    let mut recreate = false;
    let mut group_ready = false;
    let mut next_claim = tokio::time::Instant::now();
    let mut handling = futures::stream::FuturesUnordered::new();
    // The read in progress and how many slots it may fill.
    let mut read: Option<(Read, usize)> = None;

    loop {
        let stopping = shutdown.is_cancelled();
        if stopping && read.is_none() {
            break;
        }
        if !group_ready && !stopping {
            let start = if recreate {
                "0".to_owned()
            } else {
                let lookback = cfg.new_group_lookback.as_millis() as u64;
                let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
                format!("{}-0", now.saturating_sub(lookback))
            };
            let mut conn = bus.connection();
            match ensure_group(&mut conn, stream, &cfg.group, &start).await {
                Ok(()) => {
                    group_ready = true;
                    backoff.reset();
                }
                Err(e) => {
                    let _ = bus.note::<()>(Err(e));
                    if wait(&shutdown, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let reserved = read.as_ref().map_or(0, |(_, n)| *n);
        let free = slots.saturating_sub(handling.len() + reserved);

        if group_ready && !stopping && free > 0 && tokio::time::Instant::now() >= next_claim {
            next_claim = tokio::time::Instant::now() + cfg.claim_every;
            let limit = if batched { cfg.batch.max(1) } else { free };
            match reclaim(bus, cfg, limit).await {
                Ok(entries) if batched => {
                    if !entries.is_empty() {
                        handling.push(dispatch(entries));
                    }
                }
                Ok(entries) => {
                    for entry in entries {
                        handling.push(dispatch(vec![entry]));
                    }
                }
                Err(e) => tracing::debug!(error = %e, stream, "reclaim failed"),
            }
            continue;
        }
        if read.is_none() && group_ready && !stopping && free > 0 {
            // A batch takes one slot whatever its size; single entries one each.
            let (count, reserve) = if batched {
                (cfg.batch.max(1), 1)
            } else {
                let count = free.min(cfg.batch.max(1));
                (count, count)
            };
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&cfg.group)
                .arg(&cfg.consumer)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(cfg.block.as_millis() as u64)
                .arg("STREAMS")
                .arg(stream)
                .arg(">");
            let mut conn = read_conn.clone();
            read = Some((
                Box::pin(
                    async move { cmd.query_async::<Option<StreamReadReply>>(&mut conn).await },
                ),
                reserve,
            ));
        }
        let claim_at = next_claim;
        tokio::select! {
            // Stop taking new work; the loop then finishes the read in progress.
            () = shutdown.cancelled(), if !stopping => {}
            // A slot is free again: read or reclaim into it.
            Some(()) = handling.next(), if !handling.is_empty() => {}
            // Time to look for entries a dead peer left pending.
            () = tokio::time::sleep_until(claim_at), if free > 0 && !stopping && group_ready => {}
            // A failover: the blocking read is on the old master. It is dropped, not awaited:
            // entries it may have been handed never reached a handler, so they sit pending
            // and are reclaimed after `claim_idle`, handled once. The group is checked again
            // on the new master, which may have lost its latest writes.
            () = master_changes.changed(), if !stopping => {
                read = None;
                group_ready = false;
                match connect_manager(&bus.client(), cfg.block + Duration::from_secs(5), &bus.health, &shutdown).await {
                    Ok(conn) => read_conn = conn,
                    Err(_) => break,
                }
                tracing::info!(stream, master = ?bus.master(), "reading from the new redis master");
            }
            reply = async { match read.as_mut() { Some((r, _)) => r.await, None => std::future::pending().await } }, if read.is_some() => {
                read = None;
                match bus.note(reply) {
                    Ok(reply) => {
                        backoff.reset();
                        let entries = reply
                            .map(|r| r.keys)
                            .unwrap_or_default()
                            .into_iter()
                            .flat_map(|k| k.ids);
                        if batched {
                            let entries: Vec<StreamId> = entries.collect();
                            if !entries.is_empty() {
                                handling.push(dispatch(entries));
                            }
                        } else {
                            for entry in entries {
                                handling.push(dispatch(vec![entry]));
                            }
                        }
                    }
                    Err(BusError::Redis(e)) if e.code() == Some("NOGROUP") => {
                        tracing::warn!(stream, group = %cfg.group, "consumer group vanished; recreating");
                        group_ready = false;
                        recreate = true;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, stream, retry_in = ?delay, "stream read failed");
                        if wait(&shutdown, delay).await && read.is_none() {
                            break;
                        }
                    }
                }
            }
        }
    }
    // Finish what is in hand; its entries are settled as usual.
    while handling.next().await.is_some() {}
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

/// Claims up to `limit` entries that have been pending longer than `claim_idle`. An entry
/// already delivered `max_deliveries` times is dead-lettered instead of handled again: it was
/// handed out that often without ever being settled, so its consumers keep dying on it.
async fn reclaim(bus: &Bus, cfg: &ConsumerConfig, limit: usize) -> Result<Vec<StreamId>, BusError> {
    let stream = cfg.channel.stream();
    let mut conn = bus.connection();
    let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(&cfg.group)
        .arg(&cfg.consumer)
        .arg(cfg.claim_idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(limit.max(1))
        .query_async(&mut conn)
        .await;
    let reply = bus.note(reply)?;
    // Entries deleted from the stream (trimmed) while pending can only be acked away.
    for id in &reply.deleted_ids {
        let _: redis::RedisResult<()> = conn.xack(stream, &cfg.group, &[id]).await;
    }
    if reply.claimed.is_empty() {
        return Ok(Vec::new());
    }
    tracing::info!(
        count = reply.claimed.len(),
        stream,
        "reclaimed entries left pending"
    );
    let mut out = Vec::with_capacity(reply.claimed.len());
    for entry in reply.claimed {
        let deliveries = delivery_count(&mut conn, stream, &cfg.group, &entry.id)
            .await
            .unwrap_or(1);
        // XAUTOCLAIM counted this delivery too.
        if deliveries > cfg.max_deliveries {
            let reason = format!(
                "delivered {} times and never settled: its consumers stopped while handling it",
                deliveries - 1
            );
            let payload = field_string(&entry.map, STREAM_FIELD_ENVELOPE).unwrap_or_default();
            park(bus, cfg, &entry.id, &reason, &payload).await;
            continue;
        }
        out.push(entry);
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

/// Dead-letters one entry of the consumer's stream. If that fails the entry stays pending
/// and is parked again when it is reclaimed.
async fn park(bus: &Bus, cfg: &ConsumerConfig, entry_id: &str, reason: &str, payload: &str) {
    let stream = cfg.channel.stream();
    if let Err(e) = bus
        .dead_letter(stream, Some(&cfg.group), Some(entry_id), reason, payload)
        .await
    {
        tracing::warn!(error = %e, entry = %entry_id, "could not dead-letter; will retry");
    }
}

/// An entry read and decoded, ready for its handler.
struct Taken {
    entry_id: String,
    /// The envelope as stored: what a dead letter keeps.
    raw: String,
    env: Envelope,
}

/// Decodes one entry; one that is too big or undecodable is dead-lettered here (`None`).
async fn decode(bus: &Bus, cfg: &ConsumerConfig, entry: StreamId) -> Option<Taken> {
    let stream = cfg.channel.stream();
    // Too big to be one of ours: parked unread, before anything copies or decodes it.
    let size = match entry.map.get(STREAM_FIELD_ENVELOPE) {
        Some(Value::BulkString(b)) => b.len(),
        _ => 0,
    };
    if size > cfg.max_entry_bytes {
        let reason = format!(
            "the envelope is {size} bytes, over the {}-byte limit; not read",
            cfg.max_entry_bytes
        );
        park(bus, cfg, &entry.id, &reason, "").await;
        return None;
    }
    let raw = field_string(&entry.map, STREAM_FIELD_ENVELOPE);
    let decoded = match &raw {
        None if entry.map.contains_key(STREAM_FIELD_ENVELOPE) => {
            Err("the 'envelope' field is not UTF-8 text".to_owned())
        }
        None => Err("entry has no 'envelope' field".to_owned()),
        Some(raw) => Envelope::from_json(raw).map_err(|e| format!("undecodable envelope: {e}")),
    };
    match (decoded, raw) {
        (Ok(env), Some(raw)) => {
            let label = ChannelLabel::new(stream);
            bus.metrics.events_in.get_or_create(&label).inc();
            Some(Taken {
                entry_id: entry.id,
                raw,
                env,
            })
        }
        (Err(reason), raw) => {
            let payload = raw.unwrap_or_else(|| format!("{:?}", entry.map));
            park(bus, cfg, &entry.id, &reason, &payload).await;
            None
        }
        (Ok(_), None) => None,
    }
}

/// What a panic says, for the dead letter that parks its entry.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Decodes one entry, runs its handler and settles it as the handler says.
async fn process<F, Fut, R>(bus: &Bus, cfg: &ConsumerConfig, entry: StreamId, handler: &F)
where
    F: Fn(Envelope) -> Fut,
    Fut: Future<Output = R>,
    R: Into<Disposition>,
{
    let Some(taken) = decode(bus, cfg, entry).await else {
        return;
    };
    let outcome = run_one(bus, cfg, &taken, handler(taken.env.clone()))
        .await
        .map(Into::into);
    settle(bus, cfg, &taken, outcome).await;
}

/// Awaits a handler's future; a panic on the entry (a bug that the entry triggers) parks the
/// entry with the panic's message, and the consumer goes on with the next one.
async fn run_one<T>(
    bus: &Bus,
    cfg: &ConsumerConfig,
    taken: &Taken,
    fut: impl Future<Output = T>,
) -> Result<T, Disposition> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let msg = panic_message(panic.as_ref());
            let label = ChannelLabel::new(cfg.channel.stream());
            bus.metrics.handler_panics.get_or_create(&label).inc();
            tracing::error!(event_id = %taken.env.id, entry = %taken.entry_id, panic = %msg, "handler panicked; dead-lettering the entry");
            Disposition::DeadLetter(format!("the handler panicked: {msg}"))
        })
}

/// Decodes a read's entries, runs the handler once on all of them and settles each; the acks
/// go in one `XACK`.
async fn process_batch<F, Fut>(bus: &Bus, cfg: &ConsumerConfig, entries: Vec<StreamId>, handler: &F)
where
    F: Fn(Vec<Envelope>) -> Fut,
    Fut: Future<Output = Vec<Disposition>>,
{
    use futures::FutureExt as _;
    let mut taken = Vec::with_capacity(entries.len());
    for entry in entries {
        if let Some(t) = decode(bus, cfg, entry).await {
            taken.push(t);
        }
    }
    if taken.is_empty() {
        return;
    }
    let envs: Vec<Envelope> = taken.iter().map(|t| t.env.clone()).collect();
    let outcomes: Vec<Disposition> = match std::panic::AssertUnwindSafe(handler(envs))
        .catch_unwind()
        .await
    {
        Ok(d) if d.len() == taken.len() => d,
        Ok(d) => {
            let why = format!(
                "the handler answered {} of {} envelopes",
                d.len(),
                taken.len()
            );
            tracing::error!(
                stream = cfg.channel.stream(),
                "{why}; leaving the batch pending"
            );
            vec![Disposition::Retry(why); taken.len()]
        }
        Err(panic) => {
            tracing::warn!(
                stream = cfg.channel.stream(),
                panic = %panic_message(panic.as_ref()),
                count = taken.len(),
                "handler panicked on a batch; handling its envelopes one at a time"
            );
            let mut each = Vec::with_capacity(taken.len());
            for t in &taken {
                let one = run_one(bus, cfg, t, handler(vec![t.env.clone()])).await;
                each.push(match one {
                    Ok(mut d) if d.len() == 1 => d.remove(0),
                    Ok(_) => Disposition::Retry("the handler answered no envelope".into()),
                    Err(parked) => parked,
                });
            }
            each
        }
    };
    let stream = cfg.channel.stream();
    let mut acks: Vec<&str> = Vec::new();
    for (t, d) in taken.iter().zip(outcomes) {
        match d {
            Disposition::Ack => acks.push(&t.entry_id),
            other => settle(bus, cfg, t, Ok(other)).await,
        }
    }
    if !acks.is_empty() {
        let mut conn = bus.connection();
        let r: redis::RedisResult<()> = conn.xack(stream, &cfg.group, &acks).await;
        if let Err(e) = r {
            // Not acked means redelivered later; the handler is idempotent on the id.
            tracing::warn!(error = %e, count = acks.len(), stream, "ack failed");
        }
    }
}

/// Settles one entry as its handler said (or as its panic made it).
async fn settle(
    bus: &Bus,
    cfg: &ConsumerConfig,
    taken: &Taken,
    outcome: Result<Disposition, Disposition>,
) {
    let stream = cfg.channel.stream();
    let label = ChannelLabel::new(stream);
    let entry_id = &taken.entry_id;
    let mut conn = bus.connection();
    match outcome.unwrap_or_else(|parked| parked) {
        Disposition::Ack => {
            let r: redis::RedisResult<()> = conn.xack(stream, &cfg.group, &[entry_id]).await;
            if let Err(e) = r {
                // Not acked means redelivered later; the handler is idempotent on the id.
                tracing::warn!(error = %e, entry = %entry_id, "ack failed");
            }
        }
        Disposition::DeadLetter(reason) => {
            bus.metrics.handler_errors.get_or_create(&label).inc();
            park(bus, cfg, entry_id, &reason, &taken.raw).await;
        }
        Disposition::Retry(err) => {
            bus.metrics.handler_errors.get_or_create(&label).inc();
            let deliveries = delivery_count(&mut conn, stream, &cfg.group, entry_id)
                .await
                .unwrap_or(1);
            tracing::warn!(error = %err, event_id = %taken.env.id, entry = %entry_id,
                deliveries, "handler failed");
            if deliveries >= cfg.max_deliveries {
                let reason = format!("handler failed {deliveries} times: {err}");
                park(bus, cfg, entry_id, &reason, &taken.raw).await;
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
    subscribe_from(move || client.clone(), None, patterns, shutdown)
}

/// [`subscribe`] on the bus's Redis; under Sentinel it resubscribes on the new master after a
/// failover (messages published in between are not seen, as with any reconnect).
pub fn subscribe_bus(
    bus: &Bus,
    patterns: Vec<String>,
    shutdown: Shutdown,
) -> mpsc::Receiver<(String, String)> {
    let source = bus.clone();
    subscribe_from(
        move || source.client(),
        Some(bus.master_changes()),
        patterns,
        shutdown,
    )
}

fn subscribe_from(
    client: impl Fn() -> redis::Client + Send + 'static,
    mut changes: Option<MasterChanges>,
    patterns: Vec<String>,
    shutdown: Shutdown,
) -> mpsc::Receiver<(String, String)> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            let client = client();
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
                            // A failover: this subscription is on the old master.
                            () = async {
                                match changes.as_mut() {
                                    Some(c) => c.changed().await,
                                    None => std::future::pending().await,
                                }
                            } => None,
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
                    tracing::warn!("pub/sub connection lost or master changed; resubscribing");
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
