//! Benchmark: container death → `hemostat:health_alert` received by a subscriber.
//!
//! Runs the real release `hemostat-monitor` binary against a private redis-server and the real
//! Docker engine, kills `--kills` patient containers one at a time, and prints latency
//! percentiles measured three ways:
//! - from Docker's `die` event time (what the monitor can possibly react to),
//! - from the container's `FinishedAt` (the moment Docker recorded the process's death),
//! - from the moment this harness asked Docker to kill the container.
//!
//! Run with `scripts/bench-detection.sh` (builds in release first). Not part of the test run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::query_parameters::{InspectContainerOptions, KillContainerOptionsBuilder};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::StreamExt;
use hemostat_common::events::{AlertKind, Envelope};
use hemostat_tests::{Patient, PatientSpec, TestRedis, container_alert, random_id};

#[derive(Parser)]
#[command(about = "container death → health_alert latency")]
struct Args {
    /// How many containers to kill.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Containers started per batch before killing them one by one.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Pause between kills, so each measurement is of one death, not a storm.
    #[arg(long, default_value = "150ms", value_parser = hemostat_common::config::parse_duration)]
    gap: Duration,
}

struct Sample {
    from_event_ms: f64,
    from_finished_ms: f64,
    from_kill_request_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<40} n={:<4} p50={:>7.1} ms  p95={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 95.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis = TestRedis::start().context("redis-server is required")?;
    let docker = hemostat_tests::docker()
        .await
        .context("docker is required")?;
    hemostat_tests::ensure_patient_image();

    let monitor_bin: PathBuf = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("hemostat-monitor");
    if !monitor_bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p hemostat-monitor)",
            monitor_bin.display()
        );
    }
    let mut monitor = Command::new(&monitor_bin)
        .env("REDIS_URL", redis.url())
        .env("HEMOSTAT_LISTEN", "127.0.0.1:0")
        .env("HEMOSTAT_HOST_ID", "bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("start the monitor")?;

    // Subscribe the way a user would (`redis-cli subscribe hemostat:health_alert`).
    let mut pubsub = redis.client().get_async_pubsub().await?;
    pubsub.subscribe("hemostat:health_alert").await?;
    let mut messages = pubsub.into_on_message();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let prefix = format!("hsbench-{}", random_id());
    let mut samples = Vec::new();
    let mut done = 0;
    while done < args.kills {
        let n = args.batch.min(args.kills - done);
        let mut batch = Vec::new();
        for i in 0..n {
            let p = Patient::start(
                &docker,
                &prefix,
                &format!("{}", done + i),
                PatientSpec::watched(&[]),
            )
            .await;
            batch.push(p);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for p in &batch {
            let asked = Utc::now();
            // Docker's kill call returns only after the engine has torn the container down
            // (tens of ms after the death): listen meanwhile, or that wait is counted too.
            let kill = {
                let docker = docker.clone();
                let id = p.id.clone();
                tokio::spawn(async move {
                    let opts = KillContainerOptionsBuilder::new().signal("KILL").build();
                    docker.kill_container(&id, Some(opts)).await
                })
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let (env, received): (Envelope, DateTime<Utc>) = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let msg = tokio::time::timeout(left, messages.next())
                    .await
                    .with_context(|| format!("no alert for {} within 10 s", p.name))?
                    .context("subscription ended")?;
                let received = Utc::now();
                let payload: String = msg.get_payload()?;
                let env = Envelope::from_json(&payload)?;
                if container_alert(&env)
                    .is_some_and(|a| a.container.name == p.name && a.kind == AlertKind::Died)
                {
                    break (env, received);
                }
            };
            kill.await??;
            let a = container_alert(&env).context("alert")?;
            let event = a.docker_event_time.context("docker_event_time")?;
            // The engine's own record of when the process died.
            let finished: DateTime<Utc> = docker
                .inspect_container(&p.id, None::<InspectContainerOptions>)
                .await?
                .state
                .and_then(|s| s.finished_at)
                .context("finished_at")?
                .parse()?;
            samples.push(Sample {
                from_event_ms: ms(received - event),
                from_finished_ms: ms(received - finished),
                from_kill_request_ms: ms(received - asked),
            });
            tokio::time::sleep(args.gap).await;
        }
        done += n;
        drop(batch);
        eprint!("\r{done}/{} kills", args.kills);
    }
    eprintln!();
    let _ = monitor.kill();
    let _ = monitor.wait();

    println!(
        "container death → health_alert received by a redis subscriber ({} kills)",
        samples.len()
    );
    report(
        "from docker's die event",
        samples.iter().map(|s| s.from_event_ms).collect(),
    );
    report(
        "from FinishedAt (process death)",
        samples.iter().map(|s| s.from_finished_ms).collect(),
    );
    report(
        "from the kill request",
        samples.iter().map(|s| s.from_kill_request_ms).collect(),
    );
    // What a poller would give on the same deaths: the death lands uniformly within a poll
    // interval, so the expected wait is half the interval and the worst case a whole one.
    let polls: [(&str, f64); 2] = [
        ("docker-autoheal (5 s poll)", 5000.0),
        ("HemoStat prototype (30 s poll)", 30_000.0),
    ];
    let mut from_death: Vec<f64> = samples.iter().map(|s| s.from_finished_ms).collect();
    from_death.sort_by(f64::total_cmp);
    let p50 = percentile(&from_death, 50.0);
    for (name, interval) in polls {
        println!(
            "{name:<40} expected {:>7.0} ms, worst {:>7.0} ms  (hemostat p50 is {:.0}x faster than its expected)",
            interval / 2.0,
            interval,
            (interval / 2.0) / p50
        );
    }
    Ok(())
}
