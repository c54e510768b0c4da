//! Integration tests for the bus in `hemostat-common`, against a private, real `redis-server`
//! per test: publishing (stream + channel), trimming, consumer groups, retries and dead
//! letters, reclaiming a dead peer's entries, Redis restarts, idempotency keys, the heartbeat
//! and password-protected Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hemostat_common::agent::AgentContext;
use hemostat_common::bus::{self, Bus, ConsumerConfig, Outbox};
use hemostat_common::config::CommonArgs;
use hemostat_common::events::{
    AlertKind, AnalysisMethod, Channel, ContainerAlert, ContainerRef, DEAD_LETTER_STREAM,
    Detection, Envelope, Escalation, EscalationKind, FalseAlarm, HEARTBEAT_KEY_PREFIX, HostSample,
    Payload, Severity,
};
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::shutdown::Shutdown;
use hemostat_tests::TestRedis;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamPendingReply, StreamRangeReply, StreamReadReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long to wait for something that should happen.
const WAIT: Duration = Duration::from_secs(10);
/// The same, across a Redis restart (reconnect backoffs add up).
const WAIT_RESTART: Duration = Duration::from_secs(20);

const HEALTH: &str = "hemostat:stream:health_alert";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A `container_unhealthy` envelope (channel `health_alert`) about container `name`.
fn alert(name: &str) -> Envelope {
    Envelope::new(
        "monitor",
        "test-host",
        Payload::ContainerUnhealthy(ContainerAlert {
            container: ContainerRef {
                id: format!("id-{name}"),
                name: name.to_owned(),
                ..ContainerRef::default()
            },
            kind: AlertKind::Died,
            severity: Severity::Critical,
            user_initiated: false,
            reminder: false,
            detected_by: Detection::Event,
            summary: format!("{name} died"),
            state: None,
            metrics: None,
            breach: None,
            since: None,
            docker_event_time: None,
            protected: false,
            logs: None,
        }),
    )
}

/// Envelope `i` of a mix cycling through four channels.
fn mixed(i: usize) -> Envelope {
    let payload = match i % 4 {
        0 => return alert(&format!("c{i}")),
        1 => Payload::Escalation(Escalation {
            proposal: None,
            kind: EscalationKind::Other,
            severity: Severity::Warning,
            container: None,
            summary: format!("escalation {i}"),
            detail: String::new(),
        }),
        2 => Payload::HostMetrics(HostSample::default()),
        _ => Payload::FalseAlarm(FalseAlarm {
            container: None,
            alert_id: format!("a{i}"),
            root_cause: "none".into(),
            reason: "test".into(),
            confidence: 1.0,
            analysis_method: AnalysisMethod::Rules,
        }),
    };
    Envelope::new("analyzer", "test-host", payload)
}

/// What a decoded copy of `env` looks like (timestamps travel with microsecond precision).
fn wire(env: &Envelope) -> Envelope {
    Envelope::from_json(&env.to_json()).unwrap()
}

async fn connect_bus(url: &str, maxlen: u64) -> (Bus, AgentMetrics) {
    let metrics = AgentMetrics::default();
    let bus = Bus::connect(
        url,
        maxlen,
        metrics.clone(),
        Health::default(),
        &Shutdown::new(),
    )
    .await
    .expect("bus connects");
    (bus, metrics)
}

/// Fast consumer settings for tests.
fn fast(group: &str, consumer: &str) -> ConsumerConfig {
    ConsumerConfig {
        block: Duration::from_millis(100),
        claim_idle: Duration::from_millis(300),
        claim_every: Duration::from_millis(100),
        ..ConsumerConfig::new(Channel::HealthAlert, group, consumer)
    }
}

/// Runs `bus::consume` in the background until `shutdown`.
fn spawn_consumer<F, Fut>(
    bus: &Bus,
    cfg: ConsumerConfig,
    shutdown: &Shutdown,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (bus, shutdown) = (bus.clone(), shutdown.clone());
    tokio::spawn(async move { bus::consume(&bus, cfg, shutdown, handler).await })
}

/// The ids a handler was called with, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// Records the id of every envelope handled and succeeds.
fn recorder() -> (
    Seen,
    impl Fn(Envelope) -> std::future::Ready<anyhow::Result<()>> + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = move |env: Envelope| {
        s.lock().unwrap().push(env.id);
        std::future::ready(Ok(()))
    };
    (seen, handler)
}

/// Polls `check` until it is true, panicking after `timeout`.
async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn xlen(conn: &mut MultiplexedConnection, stream: &str) -> usize {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap()
}

async fn entries(conn: &mut MultiplexedConnection, stream: &str) -> Vec<StreamId> {
    let r: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    r.ids
}

async fn pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> usize {
    let r: StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap();
    r.count()
}

/// Waits until `group` exists on `stream` (a consumer has started): a brand-new group starts
/// at the end of the stream, so publishing earlier would go unseen.
async fn wait_for_group(conn: &mut MultiplexedConnection, stream: &str, group: &str) {
    eventually(&format!("group {group} on {stream}"), WAIT, async || {
        let r: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(conn)
            .await;
        r.is_ok_and(|r| r.groups.iter().any(|g| g.name == group))
    })
    .await;
}

/// Waits until `bus::subscribe` has its pattern subscription in place.
async fn wait_for_psubscribe(conn: &mut MultiplexedConnection) {
    eventually("a pattern subscription", WAIT, async || {
        let n: redis::RedisResult<i64> = redis::cmd("PUBSUB").arg("NUMPAT").query_async(conn).await;
        n.is_ok_and(|n| n >= 1)
    })
    .await;
}

/// Receives from a subscription until a message whose envelope id is `id`, or `timeout`.
async fn receive_id(
    rx: &mut mpsc::Receiver<(String, String)>,
    id: &str,
    timeout: Duration,
) -> Option<(String, Envelope)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (channel, payload) = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if let Ok(env) = Envelope::from_json(&payload)
            && env.id == id
        {
            return Some((channel, env));
        }
    }
}

fn field(entry: &StreamId, name: &str) -> String {
    entry
        .get::<String>(name)
        .unwrap_or_else(|| panic!("entry {} has no field {name}: {:?}", entry.id, entry.map))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A raw HTTP/1.1 GET; returns the status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_stream_and_channel_atomically() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();
    let mut rx = bus::subscribe(redis.client(), vec!["hemostat:*".into()], shutdown.clone());
    wait_for_psubscribe(&mut conn).await;

    let env = alert("web");
    bus.publish(&env).await.unwrap();

    let (channel, live) = receive_id(&mut rx, &env.id, WAIT)
        .await
        .expect("envelope arrives on pub/sub");
    assert_eq!(channel, "hemostat:health_alert");
    assert_eq!(live, wire(&env));

    let stored = entries(&mut conn, HEALTH).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(field(&stored[0], "event_type"), "container_unhealthy");
    let decoded = Envelope::from_json(&field(&stored[0], "envelope")).unwrap();
    assert_eq!(decoded.id, env.id);
    assert_eq!(decoded, wire(&env));

    // A batch of 100 across four channels: each envelope lands in its own channel's stream.
    let batch: Vec<Envelope> = (0..100).map(mixed).collect();
    bus.publish_all(&batch).await.unwrap();
    let expected = [
        (Channel::HealthAlert, 1 + 25),
        (Channel::Alerts, 25),
        (Channel::Metrics, 25),
        (Channel::FalseAlarm, 25),
        (Channel::RemediationNeeded, 0),
        (Channel::RemediationComplete, 0),
        (Channel::Heartbeat, 0),
    ];
    for (channel, count) in expected {
        let stored = entries(&mut conn, channel.stream()).await;
        assert_eq!(stored.len(), count, "{}", channel.stream());
        for e in &stored {
            let env = Envelope::from_json(&field(e, "envelope")).unwrap();
            assert_eq!(env.channel(), channel);
            assert_eq!(field(e, "event_type"), env.event_type());
        }
    }
    // Every id of the batch is stored exactly once.
    let mut stored_ids = Vec::new();
    for channel in Channel::ALL {
        for e in entries(&mut conn, channel.stream()).await {
            stored_ids.push(Envelope::from_json(&field(&e, "envelope")).unwrap().id);
        }
    }
    let mut want: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    want.push(env.id.clone());
    assert_eq!(sorted(stored_ids), sorted(want));

    // ...and every one was also published live, in order within its channel.
    for e in &batch {
        let (channel, _) = receive_id(&mut rx, &e.id, WAIT)
            .await
            .unwrap_or_else(|| panic!("{} not seen on pub/sub", e.id));
        assert_eq!(channel, e.channel().name());
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_trimmed_to_maxlen() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 100).await;
    let all: Vec<Envelope> = (0..5_000).map(|i| alert(&format!("c{i}"))).collect();
    for chunk in all.chunks(500) {
        bus.publish_all(chunk).await.unwrap();
    }
    let mut conn = redis.conn().await;
    let len = xlen(&mut conn, HEALTH).await;
    // MAXLEN ~ trims whole radix-tree nodes, so a little over 100 remains.
    assert!((100..=1_000).contains(&len), "XLEN {len}");
    // What remains is the newest.
    let stored = entries(&mut conn, HEALTH).await;
    let last = Envelope::from_json(&field(stored.last().unwrap(), "envelope")).unwrap();
    assert_eq!(last.id, all.last().unwrap().id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_acks_after_success_and_shares_work_in_a_group() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut consumers = Vec::new();
    for name in ["w1", "w2"] {
        let seen = seen.clone();
        let cfg = ConsumerConfig {
            batch: 10,
            ..fast("workers", name)
        };
        consumers.push(spawn_consumer(
            &bus,
            cfg,
            &shutdown,
            move |env: Envelope| {
                let seen = seen.clone();
                async move {
                    // A little work per envelope, so the two consumers interleave.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    seen.lock().unwrap().push((name.to_owned(), env.id));
                    Ok(())
                }
            },
        ));
    }
    wait_for_group(&mut conn, HEALTH, "workers").await;

    let all: Vec<Envelope> = (0..200).map(|i| alert(&format!("c{i}"))).collect();
    for chunk in all.chunks(20) {
        bus.publish_all(chunk).await.unwrap();
    }
    eventually("200 envelopes handled", WAIT, async || {
        seen.lock().unwrap().len() >= 200
    })
    .await;
    eventually("nothing pending", WAIT, async || {
        pending(&mut conn, HEALTH, "workers").await == 0
    })
    .await;

    let seen = seen.lock().unwrap().clone();
    let ids: Vec<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    let want: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!(sorted(ids), sorted(want), "every id handled exactly once");
    for name in ["w1", "w2"] {
        let n = seen.iter().filter(|(c, _)| c == name).count();
        assert!(
            n > 0,
            "{name} handled nothing; the group did not share the work"
        );
    }

    shutdown.cancel();
    for c in consumers {
        tokio::time::timeout(WAIT, c)
            .await
            .expect("consumer stops")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handler_is_retried_then_dead_lettered() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, metrics) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();

    let all: Vec<Envelope> = (0..5).map(|i| alert(&format!("c{i}"))).collect();
    let poison = all[2].id.clone();
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let cfg = ConsumerConfig {
        claim_idle: Duration::from_millis(200),
        claim_every: Duration::from_millis(100),
        max_deliveries: 3,
        ..fast("retry", "r1")
    };
    let consumer = {
        let (calls, poison) = (calls.clone(), poison.clone());
        spawn_consumer(&bus, cfg, &shutdown, move |env: Envelope| {
            *calls.lock().unwrap().entry(env.id.clone()).or_default() += 1;
            let fail = env.id == poison;
            async move {
                if fail {
                    anyhow::bail!("boom for {}", env.id);
                }
                Ok(())
            }
        })
    };
    wait_for_group(&mut conn, HEALTH, "retry").await;
    bus.publish_all(&all).await.unwrap();

    eventually("the poison envelope dead-lettered", WAIT, async || {
        xlen(&mut conn, DEAD_LETTER_STREAM).await >= 1
    })
    .await;
    let poison_entry = entries(&mut conn, HEALTH)
        .await
        .into_iter()
        .find(|e| Envelope::from_json(&field(e, "envelope")).unwrap().id == poison)
        .unwrap();
    let dead = entries(&mut conn, DEAD_LETTER_STREAM).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let dead = &dead[0];
    assert_eq!(field(dead, "source"), HEALTH);
    assert_eq!(field(dead, "group"), "retry");
    assert_eq!(field(dead, "entry_id"), poison_entry.id);
    let reason = field(dead, "reason");
    assert!(reason.contains("handler failed 3 times"), "{reason}");
    assert!(reason.contains("boom"), "{reason}");
    let payload = Envelope::from_json(&field(dead, "payload")).unwrap();
    assert_eq!(payload.id, poison);

    eventually("nothing pending", WAIT, async || {
        pending(&mut conn, HEALTH, "retry").await == 0
    })
    .await;
    // Give a would-be extra redelivery several reclaim rounds to show up (absence check).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.get(&poison),
        Some(&3),
        "attempted exactly max_deliveries times"
    );
    for e in all.iter().filter(|e| e.id != poison) {
        assert_eq!(calls.get(&e.id), Some(&1), "{} handled once", e.id);
    }
    let text = {
        let reg = hemostat_common::metrics::SharedRegistry::default();
        reg.with(|r| metrics.register(r));
        reg.encode()
    };
    assert!(
        text.contains(&format!(
            "hemostat_dead_lettered_total{{channel=\"{HEALTH}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "hemostat_handler_errors_total{{channel=\"{HEALTH}\"}} 3"
        )),
        "{text}"
    );

    shutdown.cancel();
    tokio::time::timeout(WAIT, consumer)
        .await
        .expect("consumer stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_entry_is_dead_lettered_and_consumer_keeps_going() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();
    let (seen, handler) = recorder();
    let consumer = spawn_consumer(&bus, fast("decode", "d1"), &shutdown, handler);
    wait_for_group(&mut conn, HEALTH, "decode").await;

    // Not JSON, and far over the 64 KiB a dead letter keeps (3-byte chars: the cut must
    // land on a character boundary).
    let huge = "€".repeat(30_000);
    let unknown_type = r#"{"id":"1","timestamp":"2026-01-01T00:00:00Z","agent":"a","host":"h","schema_version":1,"event_type":"nope","data":{}}"#;
    // (fields of the raw entry, what the dead-letter reason must say)
    let garbage: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("event_type", "container_unhealthy"),
                ("envelope", "not json"),
            ],
            "undecodable envelope",
        ),
        (&[("something", "else")], "no 'envelope' field"),
        (
            &[("event_type", "nope"), ("envelope", unknown_type)],
            "undecodable envelope",
        ),
        (&[("envelope", huge.as_str())], "undecodable envelope"),
    ];
    let mut valid = Vec::new();
    let mut garbage_ids = BTreeMap::new();
    for (fields, reason) in garbage {
        let env = alert(&format!("v{}", valid.len()));
        bus.publish(&env).await.unwrap();
        valid.push(env.id.clone());
        let id: String = redis::cmd("XADD")
            .arg(HEALTH)
            .arg("*")
            .arg(fields)
            .query_async(&mut conn)
            .await
            .unwrap();
        garbage_ids.insert(id, reason);
    }
    let env = alert("last-before");
    bus.publish(&env).await.unwrap();
    valid.push(env.id);

    eventually("the garbage dead-lettered", WAIT, async || {
        xlen(&mut conn, DEAD_LETTER_STREAM).await >= garbage_ids.len()
    })
    .await;
    let dead = entries(&mut conn, DEAD_LETTER_STREAM).await;
    assert_eq!(dead.len(), garbage_ids.len(), "{dead:?}");
    for d in &dead {
        assert_eq!(field(d, "source"), HEALTH);
        assert_eq!(field(d, "group"), "decode");
        let entry_id = field(d, "entry_id");
        let want = garbage_ids
            .get(entry_id.as_str())
            .unwrap_or_else(|| panic!("unexpected dead letter for {entry_id}"));
        let reason = field(d, "reason");
        assert!(
            reason.contains(want),
            "{entry_id}: {reason:?} lacks {want:?}"
        );
        let payload = field(d, "payload");
        assert!(
            payload.len() <= 64 * 1024,
            "{entry_id}: {} bytes",
            payload.len()
        );
    }
    let truncated = dead
        .iter()
        .map(|d| field(d, "payload"))
        .find(|p| p.starts_with('€'))
        .expect("the huge entry's dead letter");
    assert!(huge.starts_with(&truncated));
    assert!(truncated.len() > 64 * 1024 - 3, "{} bytes", truncated.len());

    // The loop is still running: one more valid envelope gets handled.
    let after = alert("after");
    bus.publish(&after).await.unwrap();
    valid.push(after.id.clone());
    eventually(
        "the envelope published after the garbage",
        WAIT,
        async || seen.lock().unwrap().contains(&after.id),
    )
    .await;
    eventually("nothing pending", WAIT, async || {
        pending(&mut conn, "hemostat:stream:health_alert", "decode").await == 0
    })
    .await;
    // The handler only ever saw the valid envelopes, each once.
    assert_eq!(sorted(seen.lock().unwrap().clone()), sorted(valid));

    shutdown.cancel();
    tokio::time::timeout(WAIT, consumer)
        .await
        .expect("consumer stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_consumer_entries_are_reclaimed() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(HEALTH)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let all: Vec<Envelope> = (0..5).map(|i| alert(&format!("c{i}"))).collect();
    bus.publish_all(&all).await.unwrap();

    // Consumer A reads everything and "crashes" without acking.
    let read: StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("a")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(HEALTH)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(read.keys[0].ids.len(), all.len());
    assert_eq!(pending(&mut conn, HEALTH, "g").await, all.len());

    let shutdown = Shutdown::new();
    let (seen, handler) = recorder();
    let cfg = ConsumerConfig {
        claim_idle: Duration::from_millis(300),
        ..fast("g", "b")
    };
    let consumer = spawn_consumer(&bus, cfg, &shutdown, handler);
    eventually("B handles A's entries", WAIT, async || {
        seen.lock().unwrap().len() >= all.len()
    })
    .await;
    eventually("nothing pending", WAIT, async || {
        pending(&mut conn, HEALTH, "g").await == 0
    })
    .await;
    let want: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!(sorted(seen.lock().unwrap().clone()), sorted(want));

    shutdown.cancel();
    tokio::time::timeout(WAIT, consumer)
        .await
        .expect("consumer stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_redis_restart() {
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let (bus, metrics) = connect_bus(&redis.url(), 10_000).await;
    let shutdown = Shutdown::new();
    let (seen, handler) = recorder();
    let consumer = spawn_consumer(&bus, fast("restart", "c1"), &shutdown, handler);
    let mut rx = bus::subscribe(
        redis.client(),
        vec![Channel::HealthAlert.name().into()],
        shutdown.clone(),
    );
    {
        let mut conn = redis.conn().await;
        wait_for_group(&mut conn, HEALTH, "restart").await;
        wait_for_psubscribe(&mut conn).await;
    }
    let give_up = Shutdown::new();
    let (outbox, worker) = Outbox::new(bus.clone(), 1_000, 64 << 20, give_up.clone());
    let worker = tokio::spawn(worker);

    let before: Vec<Envelope> = (0..5).map(|i| alert(&format!("before{i}"))).collect();
    for e in &before {
        assert!(outbox.send(e.clone()).await);
    }
    eventually("envelopes sent before the restart", WAIT, async || {
        let seen = seen.lock().unwrap();
        before.iter().all(|e| seen.contains(&e.id))
    })
    .await;
    let (_, live) = receive_id(&mut rx, &before[4].id, WAIT)
        .await
        .expect("live before the restart");
    assert_eq!(live.id, before[4].id);

    redis.stop();
    let during: Vec<Envelope> = (0..5).map(|i| alert(&format!("during{i}"))).collect();
    for e in &during {
        assert!(
            outbox.send(e.clone()).await,
            "the outbox queues while redis is down"
        );
    }
    // The outbox is actually failing to publish (not racing the restart).
    assert!(bus.publish(&alert("probe")).await.is_err());
    redis.start_again();

    // No persistence: the stream and the group are gone. The consumer recreates the group and
    // the outbox delivers what it held.
    eventually(
        "envelopes sent during the outage",
        WAIT_RESTART,
        async || {
            let seen = seen.lock().unwrap();
            during.iter().all(|e| seen.contains(&e.id))
        },
    )
    .await;
    {
        let mut conn = redis.conn().await;
        eventually("nothing pending after the restart", WAIT, async || {
            pending(&mut conn, HEALTH, "restart").await == 0
        })
        .await;
    }
    eventually("an empty outbox", WAIT, async || {
        metrics.outbox_depth.get() == 0
    })
    .await;

    // The subscriber resubscribed: publish until one arrives (pub/sub is lossy while it
    // reconnects, so each attempt is a fresh envelope).
    let deadline = Instant::now() + WAIT_RESTART;
    loop {
        let probe = alert("after-restart");
        let _ = bus.publish(&probe).await;
        if let Some((channel, env)) =
            receive_id(&mut rx, &probe.id, Duration::from_millis(300)).await
        {
            assert_eq!(channel, Channel::HealthAlert.name());
            assert_eq!(env.id, probe.id);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pub/sub did not resubscribe within {WAIT_RESTART:?}"
        );
    }

    shutdown.cancel();
    tokio::time::timeout(WAIT, consumer)
        .await
        .expect("consumer stops")
        .unwrap();
    drop(outbox);
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("outbox worker ends")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_time_is_idempotent() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let ttl = Duration::from_secs(60);
    // (scope, id, expected)
    let table = [
        ("x", "id-1", true),
        ("x", "id-1", false),
        ("x", "id-2", true),
        ("y", "id-1", true),
        ("x", "id-2", false),
    ];
    for (scope, id, want) in table {
        let got = bus.first_time(scope, id, ttl).await.unwrap();
        assert_eq!(got, want, "first_time({scope}, {id})");
    }
    let mut conn = redis.conn().await;
    let left: i64 = redis::cmd("TTL")
        .arg("hemostat:seen:x:id-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=60).contains(&left), "TTL {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_once_flagged_sets_the_flag_with_the_messages_and_only_once() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let ttl = Duration::from_secs(60);
    let flag = ("test:flag", "first", Duration::from_secs(30));
    let first = alert("flagged");
    assert!(
        bus.publish_once_flagged(
            "test:marker",
            ttl,
            std::slice::from_ref(&first),
            &[],
            Some(flag)
        )
        .await
        .unwrap()
    );
    let value: Option<String> = redis::cmd("GET")
        .arg("test:flag")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("first"));
    let left: i64 = redis::cmd("PTTL")
        .arg("test:flag")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=30_000).contains(&left), "PTTL {left}");
    assert_eq!(xlen(&mut conn, HEALTH).await, 1);

    // A reader clears the flag; a redelivery of the same message must not set it again, nor
    // publish again.
    let _: () = redis::cmd("DEL")
        .arg("test:flag")
        .query_async(&mut conn)
        .await
        .unwrap();
    let again = ("test:flag", "second", Duration::from_secs(30));
    assert!(
        !bus.publish_once_flagged(
            "test:marker",
            ttl,
            std::slice::from_ref(&first),
            &[],
            Some(again)
        )
        .await
        .unwrap()
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg("test:flag")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "a duplicate must not set the flag");
    assert_eq!(xlen(&mut conn, HEALTH).await, 1);

    // Without a flag it is publish_once_to: messages and extra streams, no other key.
    assert!(
        bus.publish_once_flagged(
            "test:marker-2",
            ttl,
            &[alert("plain")],
            &["test:audit"],
            None
        )
        .await
        .unwrap()
    );
    assert_eq!(xlen(&mut conn, HEALTH).await, 2);
    assert_eq!(xlen(&mut conn, "test:audit").await, 1);
    let exists: bool = redis::cmd("EXISTS")
        .arg("test:flag")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists);
}

/// The names in a window read, newest first.
async fn window_names(w: &bus::RecentWindow, bus: &Bus) -> Vec<String> {
    w.read(bus, |recent| {
        recent
            .filter_map(|e| match &e.payload {
                Payload::ContainerUnhealthy(a) => Some(a.container.name.clone()),
                _ => None,
            })
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_window_sees_every_publish_newest_first_and_keeps_its_cap() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let w = bus::RecentWindow::new(Channel::HealthAlert, 4);
    // An empty (even missing) stream is an empty window.
    assert!(window_names(&w, &bus).await.is_empty());
    for name in ["a", "b", "c"] {
        bus.publish(&alert(name)).await.unwrap();
    }
    assert_eq!(window_names(&w, &bus).await, ["c", "b", "a"]);
    // Only what is new is fetched, and the cap keeps the newest.
    for name in ["d", "e"] {
        bus.publish(&alert(name)).await.unwrap();
    }
    assert_eq!(window_names(&w, &bus).await, ["e", "d", "c", "b"]);
    // More new entries than the cap: the window is the newest `cap` of them.
    for name in ["f", "g", "h", "i", "j", "k"] {
        bus.publish(&alert(name)).await.unwrap();
    }
    assert_eq!(window_names(&w, &bus).await, ["k", "j", "i", "h"]);
    // A read with nothing new changes nothing.
    assert_eq!(window_names(&w, &bus).await, ["k", "j", "i", "h"]);
    // Envelopes of other types on the stream are kept (the reader filters), undecodable entries
    // are skipped.
    let mut conn = redis.conn().await;
    let _: String = redis::cmd("XADD")
        .arg(HEALTH)
        .arg("*")
        .arg("envelope")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    bus.publish(&alert("l")).await.unwrap();
    assert_eq!(window_names(&w, &bus).await, ["l", "k", "j", "i"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_window_readers_never_miss_what_was_published_before_they_read() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let w = Arc::new(bus::RecentWindow::new(Channel::HealthAlert, 1000));
    // Many concurrent readers, each publishing its own alert first: whichever refresh serves
    // a reader, its own alert must be in what it reads.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (w, bus) = (w.clone(), bus.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("r{i}");
            bus.publish(&alert(&name)).await.unwrap();
            let names = window_names(&w, &bus).await;
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(window_names(&w, &bus).await.len(), 64);
}

#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_sets_a_ttl_key() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let url = redis.url();
    let cli: Cli = hemostat_common::config::parse_from([
        "testagent",
        "--redis-url",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--heartbeat-interval",
        "1s",
        "--shutdown-timeout",
        "2s",
    ])
    .unwrap();
    let shutdown = Shutdown::new();
    let ctx = AgentContext::start(&cli.common, "testagent", "h1".into(), shutdown.clone())
        .await
        .expect("agent starts");
    let mut conn = redis.conn().await;
    let pattern = format!("{HEARTBEAT_KEY_PREFIX}testagent:*");

    let mut keys: Vec<String> = Vec::new();
    eventually("a heartbeat key", WAIT, async || {
        keys = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        !keys.is_empty()
    })
    .await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    assert_eq!(
        key,
        &hemostat_common::heartbeat::key("testagent", &ctx.identity.instance)
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=3).contains(&ttl), "TTL {ttl}");
    let value: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let beat = Envelope::from_json(&value).unwrap();
    assert_eq!(beat.agent, "testagent");
    assert_eq!(beat.host, "h1");
    let Payload::Heartbeat(hb) = &beat.payload else {
        panic!("not a heartbeat: {value}")
    };
    assert_eq!(hb.instance, ctx.identity.instance);
    assert_eq!(hb.interval_secs, 1);
    assert!(hb.degraded.is_empty(), "{:?}", hb.degraded);

    let stream = Channel::Heartbeat.stream();
    eventually("a heartbeat on its stream", WAIT, async || {
        entries(&mut conn, stream).await.iter().any(|e| {
            Envelope::from_json(&field(e, "envelope")).is_ok_and(
                |env| matches!(&env.payload, Payload::Heartbeat(h) if h.instance == hb.instance),
            )
        })
    })
    .await;

    let (status, body) = http_get(ctx.http_addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok", "{body}");
    assert_eq!(health["agent"], "testagent", "{body}");
    let (status, body) = http_get(ctx.http_addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hemostat_redis_up 1"), "{body}");

    shutdown.cancel();
    let stopped = tokio::time::timeout(WAIT, ctx.finish())
        .await
        .expect("finish returns");
    assert!(stopped, "stopped cleanly");
    let exists: bool = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "heartbeat key deleted on a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_redis_works() {
    let Some(redis) = TestRedis::start_with_password(Some("s3cret")) else {
        return;
    };
    assert!(redis.url().contains(":s3cret@"), "{}", redis.url());
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let env = alert("secure");
    bus.publish(&env).await.unwrap();
    assert!(bus.first_time("pw", &env.id, WAIT).await.unwrap());

    let mut conn = redis.conn().await;
    let stored = entries(&mut conn, HEALTH).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        Envelope::from_json(&field(&stored[0], "envelope"))
            .unwrap()
            .id,
        env.id
    );

    // Without the password the server refuses: the protection is real.
    let url = redis.url().replace(":s3cret@", "");
    let mut anon = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let r: redis::RedisResult<usize> = redis::cmd("XLEN").arg(HEALTH).query_async(&mut anon).await;
    assert!(r.is_err(), "{r:?}");
}

// Regression: the outbox's give-up timer used to be tracked with the agent's tasks, so every
// clean stop waited out the whole shutdown timeout (and `docker stop` SIGKILLed the agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_finish_does_not_wait_out_the_shutdown_timeout() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let url = redis.url();
    let cli: Cli = hemostat_common::config::parse_from([
        "testagent",
        "--redis-url",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "6s",
    ])
    .unwrap();
    let shutdown = Shutdown::new();
    let ctx = AgentContext::start(&cli.common, "testagent", "h1".into(), shutdown.clone())
        .await
        .expect("agent starts");
    let mut conn = redis.conn().await;
    let key = hemostat_common::heartbeat::key("testagent", &ctx.identity.instance);
    eventually("the first heartbeat", WAIT, async || {
        redis::cmd("EXISTS")
            .arg(&key)
            .query_async::<bool>(&mut conn)
            .await
            .unwrap()
    })
    .await;

    shutdown.cancel();
    let started = Instant::now();
    assert!(ctx.finish().await, "stopped cleanly");
    // Nothing is in flight: stopping must not take anywhere near the 6 s timeout.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "an idle agent took {took:?} to stop"
    );
}

// Regression: `outbox_depth` used to count envelopes that were never queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_depth_counts_only_queued_envelopes() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, metrics) = connect_bus(&redis.url(), 10_000).await;
    let (outbox, worker) = Outbox::new(bus, 10, 64 << 20, Shutdown::new());
    drop(worker); // The worker is gone (as after shutdown): nothing can be queued.
    assert!(!outbox.send(alert("late")).await);
    assert_eq!(
        metrics.outbox_depth.get(),
        0,
        "nothing is waiting in the outbox"
    );
}

// ---------------------------------------------------------------------------------------------
// Poison entries end; memory is bounded.
// ---------------------------------------------------------------------------------------------

/// A handler that panics on one entry: that entry is dead-lettered with the panic's message,
/// every other entry is handled, and the consumer keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_dead_letters_its_entry_and_the_consumer_goes_on() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, metrics) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();
    let all: Vec<Envelope> = (0..5).map(|i| alert(&format!("c{i}"))).collect();
    let poison = all[1].id.clone();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumer = {
        let (seen, poison) = (seen.clone(), poison.clone());
        spawn_consumer(
            &bus,
            fast("panics", "p1"),
            &shutdown,
            move |env: Envelope| {
                let (seen, poison) = (seen.clone(), poison.clone());
                async move {
                    assert!(env.id != poison, "boom: this entry crashes the handler");
                    seen.lock().unwrap().push(env.id);
                    Ok(())
                }
            },
        )
    };
    wait_for_group(&mut conn, HEALTH, "panics").await;
    bus.publish_all(&all).await.unwrap();
    eventually("the others handled", WAIT, async || {
        seen.lock().unwrap().len() == 4
    })
    .await;
    eventually("the poison dead-lettered", WAIT, async || {
        xlen(&mut conn, DEAD_LETTER_STREAM).await == 1
    })
    .await;
    let dead = entries(&mut conn, DEAD_LETTER_STREAM).await;
    assert!(
        field(&dead[0], "reason").contains("the handler panicked: boom"),
        "{dead:?}"
    );
    assert!(field(&dead[0], "payload").contains(&poison));
    eventually("nothing pending", WAIT, async || {
        pending(&mut conn, HEALTH, "panics").await == 0
    })
    .await;
    assert_eq!(
        metrics
            .handler_panics
            .get_or_create(&hemostat_common::metrics::ChannelLabel::new(HEALTH))
            .get(),
        1
    );
    // Still consuming.
    let late = alert("late");
    bus.publish(&late).await.unwrap();
    eventually("a later entry handled", WAIT, async || {
        seen.lock().unwrap().contains(&late.id)
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, consumer)
        .await
        .expect("consumer stops")
        .unwrap();
}

/// An entry whose handler never finishes (its consumer hangs, or is killed, each time): after
/// `max_deliveries` deliveries without being settled it is dead-lettered before it is handed
/// to a handler again, and the slots it held are not lost to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_never_settled_is_dead_lettered_after_n_deliveries() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();
    let poison = alert("hang");
    let other = alert("fine");
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let cfg = ConsumerConfig {
        concurrency: 8,
        claim_idle: Duration::from_millis(200),
        claim_every: Duration::from_millis(100),
        max_deliveries: 3,
        ..fast("hangs", "h1")
    };
    let consumer = {
        let (calls, hang) = (calls.clone(), poison.id.clone());
        spawn_consumer(&bus, cfg, &shutdown, move |env: Envelope| {
            *calls.lock().unwrap().entry(env.id.clone()).or_default() += 1;
            let hangs = env.id == hang;
            async move {
                if hangs {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
    };
    wait_for_group(&mut conn, HEALTH, "hangs").await;
    bus.publish_all(&[poison.clone(), other.clone()])
        .await
        .unwrap();
    eventually("the hanging entry dead-lettered", WAIT, async || {
        xlen(&mut conn, DEAD_LETTER_STREAM).await == 1
    })
    .await;
    let dead = entries(&mut conn, DEAD_LETTER_STREAM).await;
    assert!(
        field(&dead[0], "reason").contains("never settled"),
        "{dead:?}"
    );
    assert!(field(&dead[0], "payload").contains(&poison.id));
    let n = calls.lock().unwrap().get(&poison.id).copied().unwrap_or(0);
    assert_eq!(n, 3, "handed to a handler exactly max_deliveries times");
    assert_eq!(calls.lock().unwrap().get(&other.id).copied(), Some(1));
    shutdown.cancel();
    // The hanging handlers never finish: the consumer is abandoned, as a shutdown timeout would.
    consumer.abort();
}

/// An envelope over the size limit is dead-lettered unread (no handler sees it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_entry_is_dead_lettered_unread() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();
    let (seen, handler) = recorder();
    let cfg = ConsumerConfig {
        max_entry_bytes: 1000,
        ..fast("big", "b1")
    };
    let consumer = spawn_consumer(&bus, cfg, &shutdown, handler);
    wait_for_group(&mut conn, HEALTH, "big").await;
    let mut big = alert("big");
    if let Payload::ContainerUnhealthy(a) = &mut big.payload {
        a.summary = "x".repeat(5000);
    }
    let small = alert("small");
    bus.publish_all(&[big.clone(), small.clone()])
        .await
        .unwrap();
    eventually("the small one handled", WAIT, async || {
        seen.lock().unwrap().contains(&small.id)
    })
    .await;
    eventually("the big one dead-lettered", WAIT, async || {
        xlen(&mut conn, DEAD_LETTER_STREAM).await == 1
    })
    .await;
    let dead = entries(&mut conn, DEAD_LETTER_STREAM).await;
    assert!(field(&dead[0], "reason").contains("over the 1000-byte limit"));
    assert_eq!(field(&dead[0], "payload"), "", "not read, not copied");
    assert!(!seen.lock().unwrap().contains(&big.id));
    shutdown.cancel();
    tokio::time::timeout(WAIT, consumer)
        .await
        .expect("consumer stops")
        .unwrap();
}

/// Streams are trimmed by age: entries older than their stream's retention go, newer ones
/// stay; the metrics stream keeps less than the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_trimmed_by_age() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _) = connect_bus(&redis.url(), 100_000).await;
    let mut conn = redis.conn().await;
    let now = chrono::Utc::now().timestamp_millis() as u64;
    // Old and new entries, with explicit ids (their time is their id).
    // Oldest first: a stream's ids only grow.
    for (stream, age_s) in [
        (Channel::Metrics.stream(), 3600u64),
        (Channel::Metrics.stream(), 60),
        (HEALTH, 10 * 86_400),
        (HEALTH, 3600),
        (HEALTH, 60),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg(format!("{}-0", now - age_s * 1000))
            .arg("envelope")
            .arg("{}")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let retention = bus::Retention {
        default: Duration::from_secs(7 * 86_400),
        samples: Duration::from_secs(1800),
    };
    bus.trim(&bus::all_streams(), retention).await.unwrap();
    assert_eq!(
        xlen(&mut conn, Channel::Metrics.stream()).await,
        1,
        "only the minute-old sample"
    );
    assert_eq!(
        xlen(&mut conn, HEALTH).await,
        2,
        "an hour and a minute old; not ten days"
    );
    assert_eq!(
        retention.of(Channel::Metrics.stream()),
        Duration::from_secs(1800)
    );
    assert_eq!(
        retention.of(Channel::Heartbeat.stream()),
        Duration::from_secs(1800)
    );
    assert_eq!(retention.of(HEALTH), Duration::from_secs(7 * 86_400));
}

/// The outbox is bounded in bytes: samples are dropped once it holds its budget while Redis is
/// away, and an alert waits for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_bounded_in_bytes() {
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let (bus, metrics) = connect_bus(&redis.url(), 10_000).await;
    redis.stop();
    let one = alert("c").to_json().len();
    let (outbox, worker) = Outbox::new(bus, 10_000, one * 3, Shutdown::new());
    let worker = tokio::spawn(worker);
    let mut sent = 0;
    for i in 0..10 {
        if outbox.try_send(alert(&format!("c{i}"))) {
            sent += 1;
        }
    }
    // The worker holds one batch while it retries; the budget is about three envelopes.
    assert!(sent <= 4, "{sent} samples queued for a budget of 3");
    assert!(metrics.outbox_dropped.get() >= 6);
    assert!(metrics.outbox_bytes.get() as usize <= one * 4 + 64);
    // An alert waits (it is not dropped) until Redis is back and the queue drains.
    redis.start_again();
    let ok = tokio::time::timeout(WAIT_RESTART, outbox.send(alert("alert")))
        .await
        .expect("room freed once Redis is back");
    assert!(ok);
    drop(outbox);
    tokio::time::timeout(WAIT_RESTART, worker)
        .await
        .expect("the outbox drains")
        .unwrap();
    assert_eq!(metrics.outbox_bytes.get(), 0);
}

/// Above 80 % of `maxmemory` an agent says so.
#[test]
fn redis_memory_above_80_percent_is_degraded() {
    let mib = 1024 * 1024;
    assert_eq!(bus::memory_verdict(10 * mib, 0), None, "no limit");
    assert_eq!(bus::memory_verdict(300 * mib, 384 * mib), None);
    let why = bus::memory_verdict(320 * mib, 384 * mib).expect("degraded");
    assert!(why.contains("320 MiB of its 384 MiB"), "{why}");
}

/// An agent whose Redis is above 80 % of its `maxmemory` reports itself degraded, and recovers
/// when it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_redis_near_its_memory_limit() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, metrics) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let (used, _) = bus.memory().await.unwrap();
    let set = async |conn: &mut MultiplexedConnection, bytes: u64| {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .query_async(conn)
            .await
            .unwrap();
    };
    // Used is ~90 % of the limit.
    set(&mut conn, used * 10 / 9).await;
    let health = Health::default();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bus::trim_forever(
        bus.clone(),
        bus::all_streams(),
        bus::Retention::default(),
        health.clone(),
        shutdown.clone(),
    ));
    eventually("degraded", WAIT, async || {
        health
            .reasons()
            .iter()
            .any(|r| r.starts_with("redis_memory:"))
    })
    .await;
    assert!(metrics.redis_used_memory.get() > 0);
    shutdown.cancel();
    task.await.unwrap();
    // A roomy limit: the next look clears it.
    set(&mut conn, used * 100).await;
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bus::trim_forever(
        bus.clone(),
        bus::all_streams(),
        bus::Retention::default(),
        health.clone(),
        shutdown.clone(),
    ));
    eventually("healthy again", WAIT, async || health.reasons().is_empty()).await;
    shutdown.cancel();
    task.await.unwrap();
}

/// `INFO commandstats` calls of one command so far.
async fn command_calls(conn: &mut MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A batch consumer hands a read's envelopes to one call, in stream order, and acks them all
/// with one `XACK`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_handed_over_in_order_and_acked_in_one_command() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _metrics) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();
    // Published before the group exists: its lookback reads all of them in one read.
    let all: Vec<Envelope> = (0..50).map(|i| alert(&format!("c{i}"))).collect();
    bus.publish_all(&all).await.unwrap();
    let acks_before = command_calls(&mut conn, "xack").await;
    let calls: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let consumer = {
        let (bus, shutdown, calls) = (bus.clone(), shutdown.clone(), calls.clone());
        tokio::spawn(async move {
            bus::consume_batches(&bus, fast("batches", "b1"), shutdown, |envs| {
                let calls = calls.clone();
                async move {
                    let n = envs.len();
                    calls
                        .lock()
                        .unwrap()
                        .push(envs.into_iter().map(|e| e.id).collect());
                    vec![bus::Disposition::Ack; n]
                }
            })
            .await;
        })
    };
    eventually("all handled", WAIT, async || {
        calls.lock().unwrap().iter().map(Vec::len).sum::<usize>() == 50
    })
    .await;
    eventually("nothing pending", WAIT, async || {
        pending(&mut conn, HEALTH, "batches").await == 0
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "one read, one call: {calls:?}");
    let want: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!(calls[0], want, "in stream order");
    assert_eq!(
        command_calls(&mut conn, "xack").await - acks_before,
        1,
        "fifty acks in one XACK"
    );
    shutdown.cancel();
    consumer.await.unwrap();
}

/// Each envelope of a batch is settled as the handler says (acked, left pending, parked); a
/// panic on a batch hands its envelopes over one at a time, so only the one that triggers it
/// is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_settles_each_entry_and_a_panic_parks_only_its_culprit() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let (bus, _metrics) = connect_bus(&redis.url(), 10_000).await;
    let mut conn = redis.conn().await;
    let shutdown = Shutdown::new();
    let all: Vec<Envelope> = (0..6).map(|i| alert(&format!("c{i}"))).collect();
    bus.publish_all(&all).await.unwrap();
    let (retry, parked, poison) = (all[2].id.clone(), all[3].id.clone(), all[4].id.clone());
    let calls: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let consumer = {
        let (bus, shutdown, calls) = (bus.clone(), shutdown.clone(), calls.clone());
        let (retry, parked, poison) = (retry.clone(), parked.clone(), poison.clone());
        // Left pending, not reclaimed during the test.
        let cfg = ConsumerConfig {
            claim_idle: Duration::from_secs(600),
            ..fast("settles", "s1")
        };
        tokio::spawn(async move {
            bus::consume_batches(&bus, cfg, shutdown, |envs| {
                let calls = calls.clone();
                let (retry, parked, poison) = (retry.clone(), parked.clone(), poison.clone());
                async move {
                    let ids: Vec<String> = envs.into_iter().map(|e| e.id).collect();
                    calls.lock().unwrap().push(ids.clone());
                    assert!(
                        !ids.contains(&poison),
                        "boom: this entry crashes the handler"
                    );
                    ids.iter()
                        .map(|id| {
                            if *id == retry {
                                bus::Disposition::Retry("not now".into())
                            } else if *id == parked {
                                bus::Disposition::DeadLetter("never readable".into())
                            } else {
                                bus::Disposition::Ack
                            }
                        })
                        .collect()
                }
            })
            .await;
        })
    };
    eventually("the retried entry alone pending", WAIT, async || {
        xlen(&mut conn, DEAD_LETTER_STREAM).await == 2
            && pending(&mut conn, HEALTH, "settles").await == 1
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 7, "the batch, then each alone: {calls:?}");
    assert_eq!(calls[0].len(), 6);
    for (call, env) in calls[1..].iter().zip(&all) {
        assert_eq!(call, &vec![env.id.clone()]);
    }
    let dead = entries(&mut conn, DEAD_LETTER_STREAM).await;
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|d| (field(d, "reason"), field(d, "payload")))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(r, p)| r == "never readable" && p.contains(&parked)),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(r, p)| r.contains("the handler panicked: boom") && p.contains(&poison)),
        "{reasons:?}"
    );
    let still: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(HEALTH)
        .arg("settles")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(still.ids.len(), 1);
    let retried = entries(&mut conn, HEALTH)
        .await
        .into_iter()
        .find(|e| e.id == still.ids[0].id)
        .unwrap();
    assert!(field(&retried, "envelope").contains(&retry));
    shutdown.cancel();
    consumer.await.unwrap();
}
