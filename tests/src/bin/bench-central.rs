//! Benchmark: central path throughput. Synthetic `container_unhealthy` alerts from many
//! simulated hosts go through the real analyzer (rules only, one or more replicas) and the real
//! alert agent (to a local webhook sink), with zero loss counted on Redis, beside
//! `redis-benchmark`'s XADD rate measured in the same run on the same private Redis.
//!
//! No Docker and no responder: the analyzer reads no engine (the alert carries the state the
//! monitor saw), and the harness answers every `remediation_needed` itself with a
//! `remediation_complete`, as the target host's responder would, so that the analyzer's
//! in-flight mark of that container is cleared and the alert agent has results to tell.
//!
//! The load is open-loop: publishers push every alert as fast as Redis takes them, as many
//! monitors would in a burst, and the run measures how fast the central agents drain it.
//!
//! Run with `scripts/bench-central.sh` (builds in release first). Not part of the test run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hemostat_common::bus::Bus;
use hemostat_common::events::{
    Action, AlertKind, Channel, ContainerAlert, ContainerRef, ContainerState, Detection, Envelope,
    LogTail, Outcome, Payload, RemediationResult, Severity,
};
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::shutdown::Shutdown;
use hemostat_tests::TestRedis;
use hemostat_tests::bench::{self, Agent};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "central path throughput: analyzer (rules) and alert agent, vs redis-benchmark")]
struct Args {
    /// Synthetic health alerts to push through.
    #[arg(long, default_value_t = 100_000)]
    alerts: usize,
    /// Simulated Docker hosts (a distinct `host` on each envelope).
    #[arg(long, default_value_t = 1_000)]
    hosts: usize,
    /// Containers on each simulated host.
    #[arg(long, default_value_t = 5)]
    containers_per_host: usize,
    /// Share of alerts that are crashes (exit code 1, verdict `remediation_needed`); the rest
    /// are clean exits (exit code 0, verdict `false_alarm`).
    #[arg(long, default_value_t = 0.2)]
    crash_share: f64,
    /// Analyzer processes consuming the same group.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Concurrent publishers (each publishes one alert at a time, as a monitor does).
    #[arg(long, default_value_t = 32)]
    publishers: usize,
    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 200_000)]
    redis_requests: usize,
    /// Give up (and report what arrived) after this long.
    #[arg(long, default_value = "300s", value_parser = hemostat_common::config::parse_duration)]
    timeout: Duration,
}

/// Redis commands the harness itself sent, so that they can be told apart from the agents'.
static HARNESS_COMMANDS: AtomicU64 = AtomicU64::new(0);

/// The synthetic alert of container `c` on host `h`: a crash (exit code 1, rule `crash`) or a
/// clean exit (exit code 0, rule `clean_exit`, which the monitor reports at info severity).
fn alert(h: usize, c: usize, crash: bool) -> Envelope {
    let host = format!("host-{h:04}");
    let name = format!("app-{c}");
    let code = if crash { 1 } else { 0 };
    Envelope::new(
        "monitor",
        &host,
        Payload::ContainerUnhealthy(ContainerAlert {
            container: ContainerRef {
                id: format!("{h:032x}{c:032x}"),
                name: name.clone(),
                image: "bench/app:1".into(),
                labels: [("hemostat.enable".to_owned(), "true".to_owned())].into(),
            },
            kind: AlertKind::Died,
            severity: if crash {
                Severity::Critical
            } else {
                Severity::Info
            },
            user_initiated: false,
            reminder: false,
            detected_by: Detection::Event,
            summary: format!("{name} died with exit code {code}"),
            state: Some(ContainerState {
                status: "exited".into(),
                exit_code: Some(code),
                ..ContainerState::default()
            }),
            metrics: None,
            breach: None,
            since: None,
            docker_event_time: None,
            protected: false,
            logs: Some(LogTail {
                lines: vec![format!("worker finished with status {code}")],
                dropped: 0,
            }),
        }),
    )
}

/// What the reader saw.
#[derive(Default)]
struct Seen {
    /// Alert id → when it was published.
    published: HashMap<String, Instant>,
    /// Any envelope id (verdict, result) → the alert id it goes back to.
    origin: HashMap<String, String>,
    /// Alert id → its trace: `remediation_needed`, `false_alarm` or `alert_folded`.
    traced: HashMap<String, &'static str>,
    /// Alert published → its trace read, ms.
    trace_ms: Vec<f64>,
    /// Event ids the alert agent must record a decision for.
    expected: HashSet<String>,
    /// Event id → the alert agent's first recorded decision.
    recorded: HashMap<String, String>,
    /// Alert published → the alert agent's decision read, ms (crash notices, false alarms,
    /// results).
    notify_ms: Vec<f64>,
    escalations: usize,
    last_trace: Option<Instant>,
    last_record: Option<Instant>,
}

/// The result the target host's responder would report for `req` (dry-run, done).
fn result_for(env: &Envelope) -> Option<Envelope> {
    let Payload::RemediationNeeded(r) = &env.payload else {
        return None;
    };
    Some(Envelope::new(
        "responder",
        &r.target_host,
        Payload::RemediationComplete(RemediationResult {
            container: r.container.clone(),
            request_id: env.id.clone(),
            action: Action::Restart,
            outcome: Outcome::Success,
            reason: "dry run: restart not performed".into(),
            verification: None,
            duration_ms: 0,
            dry_run: true,
            guard: None,
            problem: r.problem.as_ref().map(|p| p.kind),
        }),
    ))
}

/// Follows the verdict streams, the escalations and the alert agent's notification history;
/// answers each `remediation_needed` as its host's responder would.
async fn reader(
    redis: redis::Client,
    bus: Bus,
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let streams = [
        Channel::RemediationNeeded.stream(),
        Channel::FalseAlarm.stream(),
        Channel::Alerts.stream(),
        hemostat_alert::HISTORY_STREAM,
    ];
    let mut last = [
        "0-0".to_owned(),
        "0-0".to_owned(),
        "0-0".to_owned(),
        "0-0".to_owned(),
    ];
    while !stop.is_cancelled() {
        HARNESS_COMMANDS.fetch_add(1, Ordering::Relaxed);
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(2000)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&last)
            .query_async(&mut conn)
            .await?;
        let Some(reply) = reply else { continue };
        let now = Instant::now();
        let mut results = Vec::new();
        let mut s = seen.lock().await;
        for key in reply.keys {
            let Some(i) = streams.iter().position(|n| *n == key.key) else {
                continue;
            };
            for entry in key.ids {
                last[i] = entry.id.clone();
                if i == 3 {
                    let (Some(ev), Some(decision)) = (
                        bench::field(&entry.map, "event_id"),
                        bench::field(&entry.map, "decision"),
                    ) else {
                        continue;
                    };
                    if !s.recorded.contains_key(&ev) {
                        let alert = s.origin.get(&ev).cloned().unwrap_or_else(|| ev.clone());
                        if let Some(t0) = s.published.get(&alert).copied() {
                            s.notify_ms
                                .push(now.duration_since(t0).as_secs_f64() * 1000.0);
                        }
                        s.recorded.insert(ev, decision);
                        s.last_record = Some(now);
                    }
                    continue;
                }
                let Some(env) =
                    bench::field(&entry.map, "envelope").and_then(|j| Envelope::from_json(&j).ok())
                else {
                    continue;
                };
                let (alert_id, trace) = match &env.payload {
                    Payload::RemediationNeeded(r) => (r.alert_id.clone(), "remediation_needed"),
                    Payload::FalseAlarm(f) => (f.alert_id.clone(), "false_alarm"),
                    Payload::AlertFolded(f) => (f.alert_id.clone(), "alert_folded"),
                    Payload::Escalation(_) => {
                        s.escalations += 1;
                        s.expected.insert(env.id.clone());
                        continue;
                    }
                    _ => continue,
                };
                // The alert agent tells about false alarms (HEMOSTAT_NOTIFY_FALSE_ALARMS) and
                // about results; verdicts to act on and folds it leaves to the result.
                if trace == "false_alarm" {
                    s.expected.insert(env.id.clone());
                }
                s.origin.insert(env.id.clone(), alert_id.clone());
                if s.traced.insert(alert_id.clone(), trace).is_none()
                    && let Some(t0) = s.published.get(&alert_id).copied()
                {
                    s.trace_ms
                        .push(now.duration_since(t0).as_secs_f64() * 1000.0);
                    s.last_trace = Some(now);
                }
                if let Some(done) = result_for(&env) {
                    s.origin.insert(done.id.clone(), alert_id);
                    s.expected.insert(done.id.clone());
                    results.push(done);
                }
            }
        }
        drop(s);
        if !results.is_empty() {
            // As many per-host responders would, each result on its own; off the reader, so
            // that reading never waits for them.
            let bus = bus.clone();
            tokio::spawn(async move {
                for r in results {
                    HARNESS_COMMANDS.fetch_add(4, Ordering::Relaxed);
                    if let Err(e) = bus.publish(&r).await {
                        eprintln!("publishing a result failed: {e}");
                    }
                }
            });
        }
    }
    Ok(())
}

/// Calls per command from `INFO commandstats` (`cmdstat_xadd:calls=12,...`).
async fn commandstats(conn: &mut MultiplexedConnection) -> anyhow::Result<HashMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// Entries pending in every `(stream, group)` pair.
async fn pending(conn: &mut MultiplexedConnection, groups: &[(&str, &str)]) -> u64 {
    let mut total = 0;
    for (stream, group) in groups {
        let p: redis::RedisResult<redis::streams::StreamPendingReply> = redis::cmd("XPENDING")
            .arg(*stream)
            .arg(*group)
            .query_async(conn)
            .await;
        total += p.map(|p| p.count() as u64).unwrap_or(u64::MAX / 16);
    }
    total
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.alerts == 0 || args.hosts == 0 || args.containers_per_host == 0 || args.replicas == 0 {
        bail!("--alerts, --hosts, --containers-per-host and --replicas must be at least 1");
    }
    let redis = TestRedis::start().context("redis-server is required")?;
    let dir = bench::release_dir()?;

    // The physical limit, on the same Redis, before any agent runs; the payload is a real
    // envelope of this run.
    let sample = alert(0, 0, true).to_json();
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
    let rb_xadd = bench::redis_benchmark(&redis, args.redis_requests, 1, &xadd)?;
    let rb_xadd_p = bench::redis_benchmark(&redis, args.redis_requests, 16, &xadd)?;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("DEL")
        .arg("bench:xadd")
        .query_async(&mut conn)
        .await?;

    // Every alert and what follows it must stay in its stream until read: no trimming.
    let maxlen = (args.alerts * 4 + 10_000).to_string();
    let requests = Arc::new(AtomicU64::new(0));
    let hook = bench::sink(requests.clone()).await?;
    let mut agents: Vec<(String, Agent)> = Vec::new();
    for i in 0..args.replicas {
        agents.push((
            format!("hemostat-analyzer #{}", i + 1),
            bench::agent(
                &dir,
                "hemostat-analyzer",
                &redis,
                &[
                    ("OPENAI_API_KEY", ""),
                    ("OPENAI_BASE_URL", ""),
                    ("HEMOSTAT_STREAM_MAXLEN", &maxlen),
                ],
            )?,
        ));
    }
    agents.push((
        "hemostat-alert".into(),
        bench::agent(
            &dir,
            "hemostat-alert",
            &redis,
            &[
                ("WEBHOOK_URL", &hook),
                ("WEBHOOK_PRESET", "json"),
                ("HEMOSTAT_NOTIFY_CRASHES", "true"),
                ("HEMOSTAT_NOTIFY_FALSE_ALARMS", "true"),
                ("HEMOSTAT_GROUP_WAIT", "200ms"),
                ("HEMOSTAT_SINK_RATE", "100000"),
                ("HEMOSTAT_STREAM_MAXLEN", &maxlen),
            ],
        )?,
    ));
    let groups = [
        (Channel::HealthAlert.stream(), "analyzer"),
        (Channel::RemediationComplete.stream(), "analyzer"),
        (Channel::HealthAlert.stream(), "alert"),
        (Channel::FalseAlarm.stream(), "alert"),
        (Channel::RemediationComplete.stream(), "alert"),
        (Channel::Alerts.stream(), "alert"),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bench::groups_ready(&redis, &groups).await {
        if Instant::now() > deadline {
            bail!("the agents never created their consumer groups");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The alerts, made before the clock starts: host i % hosts, its containers in turn.
    let envs: Vec<Envelope> = (0..args.alerts)
        .map(|i| {
            let h = i % args.hosts;
            let c = (i / args.hosts) % args.containers_per_host;
            alert(h, c, rand::random::<f64>() < args.crash_share)
        })
        .collect();
    let crashes = envs
        .iter()
        .filter(|e| matches!(&e.payload, Payload::ContainerUnhealthy(a) if a.severity == Severity::Critical))
        .count();
    let seen = Arc::new(Mutex::new(Seen::default()));
    {
        // Crash notices go to people (HEMOSTAT_NOTIFY_CRASHES); clean exits at info severity
        // are filtered without a record, by design.
        let mut s = seen.lock().await;
        for e in &envs {
            if let Payload::ContainerUnhealthy(a) = &e.payload
                && a.severity == Severity::Critical
            {
                s.expected.insert(e.id.clone());
            }
        }
    }
    let envs = Arc::new(envs);
    let bus = Bus::connect(
        &redis.url(),
        args.alerts as u64 * 4 + 10_000,
        AgentMetrics::default(),
        Health::default(),
        &Shutdown::new(),
    )
    .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let read = tokio::spawn(reader(
        redis.client(),
        bus.clone(),
        seen.clone(),
        stop.clone(),
    ));

    let ticks = bench::clock_ticks() as f64;
    let mut pids: Vec<(String, u32)> = agents.iter().map(|(n, a)| (n.clone(), a.pid())).collect();
    pids.extend(redis.pid().map(|p| ("redis-server".to_owned(), p)));
    pids.push(("bench-central (this harness)".into(), std::process::id()));
    let cpu0: Vec<u64> = pids
        .iter()
        .map(|(_, p)| bench::cpu_ticks(*p).unwrap_or(0))
        .collect();
    let commands0 = bench::commands_processed(&mut conn).await?;
    let stats0 = commandstats(&mut conn).await?;

    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for _ in 0..args.publishers {
        let (bus, envs, next, seen) = (bus.clone(), envs.clone(), next.clone(), seen.clone());
        publishers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(env) = envs.get(i) else { break };
                seen.lock()
                    .await
                    .published
                    .insert(env.id.clone(), Instant::now());
                // As the monitor publishes: XADD and PUBLISH in one MULTI (four commands).
                HARNESS_COMMANDS.fetch_add(4, Ordering::Relaxed);
                bus.publish(env).await?;
            }
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    let published_in = t0.elapsed().as_secs_f64();

    // Wait until every alert has its trace and the alert agent has recorded a decision for
    // everything it must handle, then until nothing is pending.
    let deadline = t0 + args.timeout;
    let mut last_report = Instant::now();
    let timed_out = loop {
        let (traced, expected, missing) = {
            let s = seen.lock().await;
            let missing = s
                .expected
                .iter()
                .filter(|e| !s.recorded.contains_key(*e))
                .count();
            (s.traced.len(), s.expected.len(), missing)
        };
        if traced >= args.alerts && missing == 0 {
            break false;
        }
        if Instant::now() > deadline {
            break true;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {:>5.0} s: {} of {} alerts traced, {} of {expected} decisions recorded",
                t0.elapsed().as_secs_f64(),
                traced,
                args.alerts,
                expected - missing
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut left = pending(&mut conn, &groups).await;
    let settle = Instant::now() + Duration::from_secs(10);
    while left > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = pending(&mut conn, &groups).await;
    }
    let commands = bench::commands_processed(&mut conn)
        .await?
        .saturating_sub(commands0);
    let stats1 = commandstats(&mut conn).await?;
    let cpu1: Vec<u64> = pids
        .iter()
        .map(|(_, p)| bench::cpu_ticks(*p).unwrap_or(0))
        .collect();
    stop.cancel();
    read.await??;
    let harness_commands = HARNESS_COMMANDS.load(Ordering::Relaxed);
    let s = seen.lock().await;
    let since = |t: Option<Instant>| t.map(|t| t.duration_since(t0)).unwrap_or_default();
    let trace_wall = since(s.last_trace).as_secs_f64();
    let record_wall = since(s.last_record).as_secs_f64();
    let wall = trace_wall.max(record_wall);

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
    let alerts_len = xlen(Channel::HealthAlert.stream()).await;
    let dead = xlen("hemostat:stream:dead_letter").await;
    let n = args.alerts as u64;
    let mut traces: HashMap<&str, usize> = HashMap::new();
    for t in s.traced.values() {
        *traces.entry(t).or_default() += 1;
    }
    let mut decisions: HashMap<&str, usize> = HashMap::new();
    for d in s.recorded.values() {
        *decisions.entry(d.as_str()).or_default() += 1;
    }
    let missing_decisions = s
        .expected
        .iter()
        .filter(|e| !s.recorded.contains_key(*e))
        .count();
    let untraced = (n as usize).saturating_sub(s.traced.len());

    println!(
        "central path throughput: {} synthetic container_unhealthy alerts from {} hosts × {} containers, {} analyzer replica(s) (rules) + alert agent → local webhook; no Docker, no responder",
        args.alerts, args.hosts, args.containers_per_host, args.replicas
    );
    println!(
        "mix: {crashes} crashes (exit 1 → remediation_needed; the harness answers each with remediation_complete as the host's responder would), {} clean exits (exit 0 → false_alarm)",
        args.alerts - crashes
    );
    println!("redis-benchmark XADD, 10 clients, unpipelined   {rb_xadd:>10.0} ops/s");
    println!("redis-benchmark XADD, 10 clients, pipeline 16   {rb_xadd_p:>10.0} ops/s");
    println!(
        "alerts published (XADD+PUBLISH in MULTI, {} publishers)   {:>10.0} alerts/s  ({published_in:.2} s)",
        args.publishers,
        n as f64 / published_in
    );
    println!(
        "first publish → last verdict                    {:>10.0} alerts/s  ({trace_wall:.2} s)",
        n as f64 / trace_wall
    );
    println!(
        "first publish → last alert-agent decision      {:>10.0} alerts/s  ({record_wall:.2} s)",
        n as f64 / record_wall
    );
    println!(
        "ratio to redis-benchmark XADD: {:.3} unpipelined, {:.3} pipelined (to the last verdict)",
        n as f64 / trace_wall / rb_xadd,
        n as f64 / trace_wall / rb_xadd_p
    );
    bench::latency_row("alert published → verdict read", 40, s.trace_ms.clone());
    bench::latency_row(
        "alert published → alert-agent decision",
        40,
        s.notify_ms.clone(),
    );
    println!(
        "counted: health_alert stream {alerts_len}, traces {traces:?}, escalations {}, alert-agent decisions {decisions:?} of {} due in {} webhook requests, dead letters {dead}, pending {left}",
        s.escalations,
        s.expected.len(),
        requests.load(Ordering::Relaxed)
    );
    let agent_commands = commands.saturating_sub(harness_commands);
    println!(
        "redis commands during the run: {commands} in all, {:.1} per alert by the agents ({:.1} per alert by this harness)",
        agent_commands as f64 / n as f64,
        harness_commands as f64 / n as f64
    );
    let mut per: Vec<(String, u64)> = stats1
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*stats0.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect();
    per.sort_by_key(|c| std::cmp::Reverse(c.1));
    println!("redis commands per alert, by command (agents and harness together):");
    for (name, calls) in per.iter().take(16) {
        println!("  {name:<24} {:>6.2}", *calls as f64 / n as f64);
    }
    println!("CPU over the run (% of one core):");
    for (i, (name, _)) in pids.iter().enumerate() {
        let secs = cpu1[i].saturating_sub(cpu0[i]) as f64 / ticks;
        println!(
            "  {name:<32} {:>6.1} %  ({:.1} µs per alert)",
            secs / wall * 100.0,
            secs / n as f64 * 1e6
        );
    }
    drop(s);
    drop(agents);
    if timed_out || untraced > 0 || missing_decisions > 0 || dead > 0 || left > 0 || alerts_len != n
    {
        bail!(
            "loss{}: {untraced} alerts without a verdict or fold, {missing_decisions} alert-agent decisions missing, {dead} dead letters, {left} pending, {alerts_len} of {n} alerts in the stream",
            if timed_out { " (timed out)" } else { "" }
        );
    }
    println!("lost: 0");
    Ok(())
}
