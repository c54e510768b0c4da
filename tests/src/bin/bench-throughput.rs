//! Benchmark: pipeline throughput. Synthetic health alerts go through the real analyzer (rules
//! only) → responder (dry-run) → alert (to a local webhook sink), with zero loss, compared with
//! `redis-benchmark` XADD and PUBLISH rates and the Docker engine's inspect rate measured in the
//! same run on the same Redis and engine.
//!
//! The load is closed-loop per container: each of `--containers` real, running patient
//! containers has one alert in flight at a time, because the analyzer folds a second alert of the
//! same problem of a container whose analysis or remediation is still in flight (by design: one remediation per
//! container at a time). When the responder's `remediation_complete` for a container arrives and
//! the analyzer has cleared its in-flight mark, the next alert for that container is published.
//! The alert agent is measured open-loop: it must have delivered every notification by the end.
//!
//! Run with `scripts/bench-throughput.sh` (builds in release first). Not part of the test run.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::query_parameters::InspectContainerOptions;
use clap::Parser;
use futures::StreamExt;
use hemostat_common::bus::Bus;
use hemostat_common::events::{
    AlertKind, Channel, ContainerAlert, ContainerRef, ContainerState, Detection, Envelope, Payload,
    Severity,
};
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::shutdown::Shutdown;
use hemostat_tests::bench::{self, Agent};
use hemostat_tests::{Patient, PatientSpec, TestRedis, random_id};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::{Mutex, oneshot};

#[derive(Parser)]
#[command(
    about = "pipeline throughput: analyzer → responder (dry-run) → alert, vs redis-benchmark"
)]
struct Args {
    /// Synthetic health alerts to push through the pipeline.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Running patient containers the alerts are about (one alert in flight per container).
    #[arg(long, default_value_t = 100)]
    containers: usize,
    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 200_000)]
    redis_requests: usize,
    /// Docker inspect calls for the engine's inspect rate.
    #[arg(long, default_value_t = 5_000)]
    inspects: usize,
    /// Give up (and report what arrived) after this long.
    #[arg(long, default_value = "300s", value_parser = hemostat_common::config::parse_duration)]
    timeout: Duration,
}

const HOST: &str = "bench";

/// Redis commands the harness itself sent (publishes, in-flight polls, stream reads), so that
/// they can be told apart from the agents' in Redis's own count.
static HARNESS_COMMANDS: AtomicU64 = AtomicU64::new(0);

/// How long one alert may take to come back as a `remediation_complete` before it counts as
/// lost (generous: the p99 is tens of milliseconds).
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The synthetic alert: the container died with exit code 1 (rule `crash` → restart).
fn alert(id: &str, name: &str) -> Envelope {
    Envelope::new(
        "monitor",
        HOST,
        Payload::ContainerUnhealthy(ContainerAlert {
            container: ContainerRef {
                id: id.to_owned(),
                name: name.to_owned(),
                image: hemostat_tests::PATIENT_IMAGE.into(),
                labels: [("hemostat.enable".to_owned(), "true".to_owned())].into(),
            },
            kind: AlertKind::Died,
            severity: Severity::Critical,
            user_initiated: false,
            reminder: false,
            detected_by: Detection::Event,
            summary: format!("{name} died with exit code 1"),
            state: Some(ContainerState {
                status: "exited".into(),
                exit_code: Some(1),
                ..ContainerState::default()
            }),
            metrics: None,
            breach: None,
            since: None,
            docker_event_time: None,
            protected: false,
            logs: None,
        }),
    )
}

/// What the reader saw, shared with the publishers.
#[derive(Default)]
struct Seen {
    /// Waiting publishers, by container id.
    waiters: HashMap<String, oneshot::Sender<()>>,
    /// When each container's current alert was published.
    started: HashMap<String, Instant>,
    /// remediation_complete id → when its alert was published.
    completes: HashMap<String, Instant>,
    /// Notification event ids recorded as sent, with their end-to-end latency.
    sent: HashMap<String, f64>,
    outcomes: HashMap<String, usize>,
    false_alarms: usize,
    last_sent: Option<Instant>,
    last_complete: Option<Instant>,
}

/// Follows remediation_complete, false_alarm and the alert agent's notification history.
async fn reader(
    redis: redis::Client,
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let streams = [
        Channel::RemediationComplete.stream(),
        Channel::FalseAlarm.stream(),
        hemostat_alert::HISTORY_STREAM,
    ];
    let mut last = ["0-0".to_owned(), "0-0".to_owned(), "0-0".to_owned()];
    while !stop.is_cancelled() {
        HARNESS_COMMANDS.fetch_add(1, Ordering::Relaxed);
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(200)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&last)
            .query_async(&mut conn)
            .await?;
        let Some(reply) = reply else { continue };
        let now = Instant::now();
        let mut s = seen.lock().await;
        for key in reply.keys {
            let Some(i) = streams.iter().position(|n| *n == key.key) else {
                continue;
            };
            for entry in key.ids {
                last[i] = entry.id.clone();
                if i == 2 {
                    if bench::field(&entry.map, "decision").as_deref() == Some("sent")
                        && let Some(ev) = bench::field(&entry.map, "event_id")
                        && let Some(t0) = s.completes.get(&ev).copied()
                    {
                        s.sent
                            .insert(ev, now.duration_since(t0).as_secs_f64() * 1000.0);
                        s.last_sent = Some(now);
                    }
                    continue;
                }
                let Some(env) =
                    bench::field(&entry.map, "envelope").and_then(|j| Envelope::from_json(&j).ok())
                else {
                    continue;
                };
                let container = match &env.payload {
                    Payload::RemediationComplete(r) => {
                        *s.outcomes
                            .entry(format!("{:?}", r.outcome).to_lowercase())
                            .or_default() += 1;
                        r.container.as_ref().map(|c| c.id.clone())
                    }
                    Payload::FalseAlarm(f) => {
                        s.false_alarms += 1;
                        f.container.as_ref().map(|c| c.id.clone())
                    }
                    _ => None,
                };
                let Some(id) = container else { continue };
                if matches!(env.payload, Payload::RemediationComplete(_)) {
                    if let Some(t0) = s.started.get(&id).copied() {
                        s.completes.insert(env.id.clone(), t0);
                    }
                    s.last_complete = Some(now);
                }
                if let Some(w) = s.waiters.remove(&id) {
                    let _ = w.send(());
                }
            }
        }
    }
    Ok(())
}

/// The analyzer's in-flight marks as they are deleted, from Redis keyspace notifications (the
/// harness's own server: `notify-keyspace-events Kg`), so the publishers need not poll.
#[derive(Default)]
struct Cleared {
    /// Publishers waiting for their container's mark to go, by container id.
    waiting: HashMap<String, oneshot::Sender<()>>,
    /// Marks deleted before their publisher started waiting.
    early: HashSet<String>,
}

/// Follows the deletions of `hemostat:inflight:<host>:<id>:<kind>` keys.
async fn cleared_reader(redis: redis::Client, cleared: Arc<Mutex<Cleared>>) -> anyhow::Result<()> {
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Kg")
        .query_async(&mut conn)
        .await?;
    let mut pubsub = redis.get_async_pubsub().await?;
    let prefix = format!("__keyspace@0__:hemostat:inflight:{HOST}:");
    pubsub.psubscribe(format!("{prefix}*")).await?;
    let mut messages = pubsub.into_on_message();
    while let Some(m) = messages.next().await {
        let event: String = m.get_payload().unwrap_or_default();
        if event != "del" && event != "expired" {
            continue;
        }
        let Some(id) = m
            .get_channel_name()
            .strip_prefix(&prefix)
            .map(|rest| rest.split_once(':').map_or(rest, |(id, _kind)| id))
        else {
            continue;
        };
        let mut c = cleared.lock().await;
        match c.waiting.remove(id) {
            Some(tx) => {
                let _ = tx.send(());
            }
            None => {
                c.early.insert(id.to_owned());
            }
        }
    }
    Ok(())
}

/// Waits until the analyzer has cleared the container's in-flight mark (it does so when it
/// reads the same remediation_complete), so the next alert is analysed rather than folded.
/// Each verdict sets the mark once and its result clears it once, so one deletion is due per
/// round.
async fn inflight_cleared(cleared: &Mutex<Cleared>, id: &str) -> anyhow::Result<()> {
    let rx = {
        let mut c = cleared.lock().await;
        if c.early.remove(id) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        c.waiting.insert(id.to_owned(), tx);
        rx
    };
    match tokio::time::timeout(EVENT_TIMEOUT, rx).await {
        Ok(Ok(())) => Ok(()),
        _ => bail!("the in-flight mark of container {id} was never cleared"),
    }
}

/// What every container's loop shares.
struct Loops {
    seen: Arc<Mutex<Seen>>,
    cleared: Arc<Mutex<Cleared>>,
    /// Alerts handed out so far; the loops stop at `total`.
    tickets: AtomicUsize,
    total: usize,
    /// Alert published → its remediation_complete read, ms.
    loop_ms: Mutex<Vec<f64>>,
    /// Alerts that never came back: (container name, alert id).
    lost: Mutex<Vec<(String, String)>>,
}

/// One container's closed loop: publish, wait for its result, repeat while tickets last.
async fn publisher(bus: Bus, patient: Arc<Patient>, loops: Arc<Loops>) -> anyhow::Result<()> {
    while loops.tickets.fetch_add(1, Ordering::Relaxed) < loops.total {
        let env = alert(&patient.id, &patient.name);
        let (tx, rx) = oneshot::channel();
        let t0 = Instant::now();
        {
            let mut s = loops.seen.lock().await;
            s.waiters.insert(patient.id.clone(), tx);
            s.started.insert(patient.id.clone(), t0);
        }
        // As the monitor publishes: XADD and PUBLISH in one MULTI (four commands).
        HARNESS_COMMANDS.fetch_add(4, Ordering::Relaxed);
        bus.publish(&env).await?;
        match tokio::time::timeout(EVENT_TIMEOUT, rx).await {
            Ok(r) => r.context("reader stopped")?,
            Err(_) => {
                // Lost somewhere: retire this container (its in-flight state is unknown) and
                // let the report say where the alert stopped.
                loops
                    .lost
                    .lock()
                    .await
                    .push((patient.name.clone(), env.id.clone()));
                return Ok(());
            }
        }
        loops
            .loop_ms
            .lock()
            .await
            .push(t0.elapsed().as_secs_f64() * 1000.0);
        inflight_cleared(&loops.cleared, &patient.id).await?;
    }
    Ok(())
}

/// Which hop a lost alert reached: a verdict for it, and a result for that verdict.
async fn where_it_stopped(conn: &mut MultiplexedConnection, alert_id: &str) -> String {
    let all = |stream: &'static str| {
        let mut c = conn.clone();
        async move {
            let r: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .query_async(&mut c)
                .await;
            r.map(|r| r.ids)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| {
                    bench::field(&e.map, "envelope").and_then(|j| Envelope::from_json(&j).ok())
                })
                .collect::<Vec<Envelope>>()
        }
    };
    let verdict = all(Channel::RemediationNeeded.stream())
        .await
        .into_iter()
        .find(|e| matches!(&e.payload, Payload::RemediationNeeded(r) if r.alert_id == alert_id));
    let Some(verdict) = verdict else {
        return "the analyzer published no verdict for it (folded, or never read)".into();
    };
    let result = all(Channel::RemediationComplete.stream())
        .await
        .into_iter()
        .find(
            |e| matches!(&e.payload, Payload::RemediationComplete(r) if r.request_id == verdict.id),
        );
    match result {
        None => format!(
            "verdict {} published, but the responder reported nothing",
            verdict.id
        ),
        Some(r) => format!(
            "verdict {} and result {} published, but the harness did not see the result",
            verdict.id, r.id
        ),
    }
}

/// The engine's inspect rate: `n` inspects of running containers, 16 at a time.
async fn inspect_rate(docker: &Docker, patients: &[Arc<Patient>], n: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let results: Vec<bool> = futures::stream::iter(0..n)
        .map(|i| {
            let id = patients[i % patients.len()].id.clone();
            async move {
                docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let failed = results.iter().filter(|ok| !**ok).count();
    if failed > 0 {
        bail!("{failed} of {n} inspects failed");
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn dockerd_pid() -> Option<u32> {
    let out = Command::new("pidof").arg("dockerd").output().ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.containers == 0 || args.events == 0 {
        bail!("--containers and --events must be at least 1");
    }
    let redis = TestRedis::start().context("redis-server is required")?;
    let docker = hemostat_tests::docker()
        .await
        .context("docker is required")?;
    hemostat_tests::ensure_patient_image();
    let dir = bench::release_dir()?;

    // The physical limits, on the same Redis, before any agent runs. The payload is the size of
    // a real envelope.
    let prefix = format!("bench-tp-{}", random_id());
    let sample = alert(&"0".repeat(64), &format!("{prefix}-000")).to_json();
    let n = args.redis_requests;
    let xadd = [
        "XADD",
        "bench:xadd",
        "MAXLEN",
        "~",
        "100000",
        "*",
        "envelope",
        &sample,
    ];
    let pubsub = ["PUBLISH", "bench:publish", &sample];
    let rb_xadd = bench::redis_benchmark(&redis, n, 1, &xadd)?;
    let rb_xadd_p = bench::redis_benchmark(&redis, n, 16, &xadd)?;
    let rb_pub = bench::redis_benchmark(&redis, n, 1, &pubsub)?;
    let rb_pub_p = bench::redis_benchmark(&redis, n, 16, &pubsub)?;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("DEL")
        .arg("bench:xadd")
        .query_async(&mut conn)
        .await?;

    // Real containers for the alerts to be about, started ten at a time.
    let mut patients = Vec::new();
    let suffixes: Vec<String> = (0..args.containers).map(|i| format!("{i:03}")).collect();
    for chunk in suffixes.chunks(10) {
        let started = futures::future::join_all(
            chunk
                .iter()
                .map(|s| Patient::start(&docker, &prefix, s, PatientSpec::watched(&[]))),
        )
        .await;
        patients.extend(started.into_iter().map(Arc::new));
    }
    let inspects = inspect_rate(&docker, &patients, args.inspects).await?;

    let requests = Arc::new(AtomicU64::new(0));
    let hook = bench::sink(requests.clone()).await?;
    // Guards that exist for a real host's sake (backoff, breaker, storm, write rate) are opened:
    // the same few containers are "remediated" many times a second, and this measures the path,
    // not the guards. Every check still runs on every request.
    let agents: Vec<Agent> = vec![
        bench::agent(
            &dir,
            "hemostat-analyzer",
            &redis,
            &[
                ("OPENAI_API_KEY", ""),
                ("OPENAI_BASE_URL", ""),
                ("HEMOSTAT_CRASH_LOOP_WINDOW", "1s"),
                ("HEMOSTAT_CRASH_LOOP_BUDGET", "1000"),
            ],
        )?,
        bench::agent(
            &dir,
            "hemostat-responder",
            &redis,
            &[
                ("HEMOSTAT_DRY_RUN", "true"),
                ("HEMOSTAT_BACKOFF_INITIAL", "0s"),
                ("HEMOSTAT_BACKOFF_MAX", "0s"),
                ("HEMOSTAT_BACKOFF_RESET", "1s"),
                ("HEMOSTAT_BREAKER_THRESHOLD", "1000"),
                ("HEMOSTAT_BREAKER_WINDOW", "1s"),
                ("HEMOSTAT_STORM_THRESHOLD", "1000"),
                ("HEMOSTAT_STORM_SHARE", "1.0"),
                ("HEMOSTAT_STORM_WINDOW", "1s"),
                ("HEMOSTAT_DOCKER_WRITE_RATE", "100000"),
            ],
        )?,
        bench::agent(
            &dir,
            "hemostat-alert",
            &redis,
            &[
                ("WEBHOOK_URL", &hook),
                ("WEBHOOK_PRESET", "json"),
                ("HEMOSTAT_NOTIFY_CRASHES", "false"),
                ("HEMOSTAT_GROUP_WAIT", "200ms"),
                ("HEMOSTAT_SINK_RATE", "100000"),
            ],
        )?,
    ];
    let ready = [
        (Channel::HealthAlert.stream(), "analyzer"),
        (Channel::RemediationNeeded.stream(), "responder:bench"),
        (Channel::RemediationComplete.stream(), "alert"),
        (Channel::RemediationComplete.stream(), "analyzer"),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bench::groups_ready(&redis, &ready).await {
        if Instant::now() > deadline {
            bail!("the agents never created their consumer groups");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let read = tokio::spawn(reader(redis.client(), seen.clone(), stop.clone()));
    let cleared = Arc::new(Mutex::new(Cleared::default()));
    let clear_reader = tokio::spawn(cleared_reader(redis.client(), cleared.clone()));
    // The keyspace subscription must be in place before the first alert.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let patterns: i64 = redis::cmd("PUBSUB")
            .arg("NUMPAT")
            .query_async(&mut conn)
            .await?;
        if patterns > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the keyspace-notification subscription never started");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ticks = bench::clock_ticks() as f64;
    let mut pids: Vec<(&str, u32)> = vec![
        ("hemostat-analyzer", agents[0].pid()),
        ("hemostat-responder", agents[1].pid()),
        ("hemostat-alert", agents[2].pid()),
    ];
    pids.extend(redis.pid().map(|p| ("redis-server", p)));
    pids.extend(dockerd_pid().map(|p| ("dockerd", p)));
    pids.push(("bench-throughput (this harness)", std::process::id()));
    let cpu0: Vec<u64> = pids
        .iter()
        .map(|(_, p)| bench::cpu_ticks(*p).unwrap_or(0))
        .collect();

    let commands0 = bench::commands_processed(&mut conn).await?;
    let loops = Arc::new(Loops {
        seen: seen.clone(),
        cleared: cleared.clone(),
        tickets: AtomicUsize::new(0),
        total: args.events,
        loop_ms: Mutex::new(Vec::with_capacity(args.events)),
        lost: Mutex::new(Vec::new()),
    });
    let bus = Bus::connect(
        &redis.url(),
        100_000,
        AgentMetrics::default(),
        Health::default(),
        &Shutdown::new(),
    )
    .await?;
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for p in &patients {
        handles.push(tokio::spawn(publisher(
            bus.clone(),
            p.clone(),
            loops.clone(),
        )));
    }
    let progress = {
        let seen = seen.clone();
        let loops = loops.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let s = seen.lock().await;
                eprintln!(
                    "  {:>5.0} s: {} alerts published, {} remediation_complete, {} notifications sent",
                    t0.elapsed().as_secs_f64(),
                    loops.tickets.load(Ordering::Relaxed).min(loops.total),
                    s.completes.len(),
                    s.sent.len()
                );
            }
        })
    };
    let all = futures::future::try_join_all(handles);
    match tokio::time::timeout(args.timeout, all).await {
        Ok(r) => {
            for r in r? {
                r?;
            }
        }
        Err(_) => bail!(
            "timed out after {:?}: {} of {} alerts published",
            args.timeout,
            loops.tickets.load(Ordering::Relaxed).min(args.events),
            args.events
        ),
    }
    // The alert agent drains in its own time: wait for every notification to be sent.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = seen.lock().await.sent.len();
        if sent >= args.events || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.abort();
    let commands = bench::commands_processed(&mut conn)
        .await?
        .saturating_sub(commands0);
    let harness_commands = HARNESS_COMMANDS.load(Ordering::Relaxed);
    let cpu1: Vec<u64> = pids
        .iter()
        .map(|(_, p)| bench::cpu_ticks(*p).unwrap_or(0))
        .collect();
    stop.cancel();
    read.await??;
    clear_reader.abort();
    let s = seen.lock().await;
    let wall = s
        .last_sent
        .map(|t| t.duration_since(t0))
        .unwrap_or_default()
        .as_secs_f64();
    let loop_wall = s
        .last_complete
        .map(|t| t.duration_since(t0))
        .unwrap_or_default()
        .as_secs_f64();

    // Zero loss, counted on the streams themselves.
    let xlen = |stream: &'static str| {
        let mut c = conn.clone();
        async move {
            let n: u64 = redis::cmd("XLEN")
                .arg(stream)
                .query_async(&mut c)
                .await
                .unwrap_or(0);
            n
        }
    };
    let alerts = xlen(Channel::HealthAlert.stream()).await;
    let verdicts = xlen(Channel::RemediationNeeded.stream()).await;
    let results = xlen(Channel::RemediationComplete.stream()).await;
    let dead = xlen("hemostat:stream:dead_letter").await;
    let mut pending = 0u64;
    for (stream, group) in ready {
        let p: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(&mut conn)
            .await?;
        pending += p.count() as u64;
    }
    let sent = s.sent.len() as u64;
    let n = args.events as u64;
    let lost = (n - verdicts.min(n)) + (n - results.min(n)) + (n - sent.min(n));

    println!(
        "pipeline throughput: {} synthetic alerts, {} containers (one alert in flight each), analyzer rules → responder dry-run → alert → local webhook",
        args.events, args.containers
    );
    println!("redis-benchmark XADD,    10 clients, unpipelined   {rb_xadd:>10.0} ops/s");
    println!("redis-benchmark XADD,    10 clients, pipeline 16   {rb_xadd_p:>10.0} ops/s");
    println!("redis-benchmark PUBLISH, 10 clients, unpipelined   {rb_pub:>10.0} ops/s");
    println!("redis-benchmark PUBLISH, 10 clients, pipeline 16   {rb_pub_p:>10.0} ops/s");
    println!("docker inspect, 16 concurrent                      {inspects:>10.0} calls/s");
    let rate = n as f64 / wall;
    let loop_rate = n as f64 / loop_wall;
    println!(
        "end to end (alert published → notification sent)   {rate:>10.0} events/s  ({wall:.2} s)"
    );
    println!(
        "analyzer + responder (→ remediation_complete)      {loop_rate:>10.0} events/s  ({loop_wall:.2} s)"
    );
    println!(
        "ratio to redis-benchmark: {:.3} of XADD unpipelined, {:.3} of XADD pipelined, {:.3} of PUBLISH unpipelined; {:.2} of docker inspect calls/s",
        rate / rb_xadd,
        rate / rb_xadd_p,
        rate / rb_pub,
        rate / inspects
    );
    let mut lm = loops.loop_ms.lock().await.clone();
    bench::latency_row(
        "alert published → remediation_complete read",
        46,
        std::mem::take(&mut lm),
    );
    bench::latency_row(
        "alert published → notification sent",
        46,
        s.sent.values().copied().collect(),
    );
    println!(
        "counted: alerts {alerts}, remediation_needed {verdicts}, false_alarm {}, remediation_complete {results} {:?}, notifications sent {sent} in {} webhook requests, dead letters {dead}, pending {pending}",
        s.false_alarms,
        s.outcomes,
        requests.load(Ordering::Relaxed)
    );
    println!(
        "redis commands during the run: {commands} in all, {:.1} per event by the agents ({:.1} per event by this harness)",
        commands.saturating_sub(harness_commands) as f64 / n as f64,
        harness_commands as f64 / n as f64
    );
    println!("CPU over the run (% of one core):");
    for (i, (name, _)) in pids.iter().enumerate() {
        let secs = cpu1[i].saturating_sub(cpu0[i]) as f64 / ticks;
        println!("  {name:<32} {:>6.1} %", secs / wall * 100.0);
    }
    for (name, id) in loops.lost.lock().await.iter() {
        println!(
            "lost: alert {id} about {name}: {}",
            where_it_stopped(&mut conn, id).await
        );
    }
    let lost_events = loops.lost.lock().await.len() as u64;
    let distinct: HashSet<&String> = s.sent.keys().collect();
    drop(agents);
    if lost > 0
        || lost_events > 0
        || dead > 0
        || pending > 0
        || s.false_alarms > 0
        || distinct.len() as u64 != n
    {
        bail!(
            "loss: {lost} missing across the hops, {dead} dead letters, {pending} pending, {} false alarms",
            s.false_alarms
        );
    }
    println!("lost: 0");
    Ok(())
}
