//! Benchmark: Redis memory over time. The whole stack (release monitor, analyzer, responder and
//! alert agent) watches `--containers` running patients, a few of which crash now and then so
//! that the alert, verdict, result and audit streams see traffic too, with stats every
//! `--stats-interval`; every `--sample-every` the harness reads Redis's `used_memory` and the
//! length of every stream, and prints a row. At the end it prints the growth over the second
//! half of the run, each stream's cost per entry, and what Redis would hold a month on at the
//! run's rates (the event streams full to their retention, or their length cap).
//!
//! Redis is configured as in the compose file (`maxmemory 384mb`, `noeviction`). The run is
//! bounded (`--duration`) and stops by itself; the agents and containers are removed at the end.
//!
//! Run with `scripts/bench-soak.sh` (builds in release first). Not part of the test run.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hemostat_common::bus::all_streams;
use hemostat_common::config::parse_duration;
use hemostat_tests::bench;
use hemostat_tests::{Patient, PatientSpec, TestRedis, random_id};

#[derive(Parser)]
#[command(about = "Redis memory of a watched host over time")]
struct Args {
    /// Watched containers.
    #[arg(long, default_value_t = 100)]
    containers: usize,
    /// Of which this many crash every `--crash-every` (and are restarted by hemostat).
    #[arg(long, default_value_t = 4)]
    crashers: usize,
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    crash_every: Duration,
    /// The monitor's stats interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    stats_interval: Duration,
    /// `HEMOSTAT_METRICS_RETENTION` for every agent.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    metrics_retention: Duration,
    /// How long to run.
    #[arg(long, default_value = "40m", value_parser = parse_duration)]
    duration: Duration,
    /// How often to read Redis's memory.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    sample_every: Duration,
}

async fn used_memory(redis: &TestRedis) -> anyhow::Result<u64> {
    let mut conn = redis.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("used_memory in INFO memory")
}

/// Every stream the stack writes: the bus's, and the alert agent's notification history.
fn streams() -> Vec<&'static str> {
    let mut v = all_streams();
    v.push(hemostat_alert::HISTORY_STREAM);
    v
}

async fn lengths(redis: &TestRedis) -> anyhow::Result<Vec<(String, u64)>> {
    let mut conn = redis.conn().await;
    let mut out = Vec::new();
    for s in streams() {
        let n: u64 = redis::cmd("XLEN").arg(s).query_async(&mut conn).await?;
        out.push((s.trim_start_matches("hemostat:stream:").to_owned(), n));
    }
    Ok(out)
}

/// The compose file's `HEMOSTAT_STREAM_MAXLEN`.
const STREAM_MAXLEN: u64 = 20_000;
/// The compose file's `HEMOSTAT_STREAM_RETENTION`, in days.
const STREAM_RETENTION_DAYS: f64 = 7.0;

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis = TestRedis::start().context("redis-server is required")?;
    {
        let mut conn = redis.conn().await;
        for (k, v) in [("maxmemory", "384mb"), ("maxmemory-policy", "noeviction")] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query_async(&mut conn)
                .await?;
        }
    }
    let docker = hemostat_tests::docker()
        .await
        .context("docker is required")?;
    hemostat_tests::ensure_patient_image();
    let prefix = format!("hssoak-{}", random_id());
    let scope = format!("hemostat.test={prefix}");
    let stats = format!("{}ms", args.stats_interval.as_millis());
    let retention = format!("{}s", args.metrics_retention.as_secs());
    let common = [
        ("HEMOSTAT_SCOPE_LABEL", scope.as_str()),
        ("HEMOSTAT_METRICS_RETENTION", retention.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = common.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let dir = bench::release_dir()?;
    let mut containers = Vec::with_capacity(args.containers);
    let crash_after = format!("{}", args.crash_every.as_secs());
    for i in 0..args.containers {
        let spec = if i < args.crashers {
            PatientSpec::watched(&["run", "--exit-code", "1", "--after", &crash_after])
        } else {
            PatientSpec::watched(&["run"])
        };
        containers.push(Patient::try_start(&docker, &prefix, &format!("c{i}"), spec).await?);
    }
    let monitor_env = {
        let mut v = with(&[]);
        v.push(("HEMOSTAT_STATS_INTERVAL", stats.as_str()));
        v.push(("HEMOSTAT_HOST_INTERVAL", "10s"));
        v
    };
    let _monitor = bench::agent(&dir, "hemostat-monitor", &redis, &monitor_env)?;
    let _analyzer = bench::agent(
        &dir,
        "hemostat-analyzer",
        &redis,
        &with(&[("OPENAI_API_KEY", ""), ("OPENAI_BASE_URL", "")]),
    )?;
    // A crash every few minutes is a fresh failure each time, not a loop to back off from.
    let _responder = bench::agent(
        &dir,
        "hemostat-responder",
        &redis,
        &with(&[("HEMOSTAT_BACKOFF_RESET", "1m")]),
    )?;
    let _alert = bench::agent(&dir, "hemostat-alert", &redis, &with(&[]))?;

    println!(
        "soak: {} containers ({} crash every {:?}), stats every {:?}, metrics retention {:?}, for {:?}",
        args.containers,
        args.crashers,
        args.crash_every,
        args.stats_interval,
        args.metrics_retention,
        args.duration
    );
    let started = Instant::now();
    let mut rows: Vec<(Duration, u64)> = Vec::new();
    let mut header = false;
    while started.elapsed() < args.duration + Duration::from_secs(1) {
        let used = used_memory(&redis).await?;
        let lens = lengths(&redis).await?;
        if !header {
            let names: Vec<String> = lens.iter().map(|(n, _)| format!("{n:>10.10}")).collect();
            println!("{:>6} {:>10} {}", "min", "used MiB", names.join(" "));
            header = true;
        }
        let counts: Vec<String> = lens.iter().map(|(_, c)| format!("{c:>10}")).collect();
        println!(
            "{:>6.1} {:>10.2} {}",
            started.elapsed().as_secs_f64() / 60.0,
            mib(used),
            counts.join(" ")
        );
        rows.push((started.elapsed(), used));
        tokio::time::sleep(args.sample_every).await;
    }
    // Growth over the second half of the run (after the retention window filled, when the run
    // is at least twice as long as the retention): a least-squares slope, bytes per minute.
    let half: Vec<&(Duration, u64)> = rows
        .iter()
        .filter(|(t, _)| *t >= args.duration / 2)
        .collect();
    let n = half.len() as f64;
    if n >= 2.0 {
        let mx = half
            .iter()
            .map(|(t, _)| t.as_secs_f64() / 60.0)
            .sum::<f64>()
            / n;
        let my = half.iter().map(|(_, b)| *b as f64).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (t, b) in &half {
            let dx = t.as_secs_f64() / 60.0 - mx;
            sxy += dx * (*b as f64 - my);
            sxx += dx * dx;
        }
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let min = half.iter().map(|(_, b)| *b).min().unwrap_or(0);
        let max = half.iter().map(|(_, b)| *b).max().unwrap_or(0);
        // Not a month's projection: the event streams grow until their retention (days)
        // fills, which a run this short never sees; that projection comes last, per stream.
        println!(
            "second half: used_memory {:.2}–{:.2} MiB, slope {:+.3} MiB/hour",
            mib(min),
            mib(max),
            slope * 60.0 / (1024.0 * 1024.0)
        );
    }
    // What each stream costs per entry, exactly (`MEMORY USAGE … SAMPLES 0` reads every
    // node), and what the streams bounded by count would hold at their cap.
    let mut conn = redis.conn().await;
    let mut at_cap = 0.0;
    // A month from now at this run's rates: the streams bounded by age hold what arrives in
    // their retention (capped at their length), the sample streams what they hold now, and
    // the rest of Redis (groups, keys, allocator overhead) stays what it is now.
    let run_min = started.elapsed().as_secs_f64() / 60.0;
    let event_retention_min = STREAM_RETENTION_DAYS * 24.0 * 60.0;
    let (mut month, mut streams_now) = (0.0, 0.0);
    println!(
        "{:>14} {:>8} {:>10} {:>12}",
        "stream", "entries", "MiB", "bytes/entry"
    );
    for s in streams() {
        let n: u64 = redis::cmd("XLEN").arg(s).query_async(&mut conn).await?;
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(s)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await?;
        let bytes = bytes.unwrap_or(0);
        let per = if n > 0 { bytes as f64 / n as f64 } else { 0.0 };
        let name = s.trim_start_matches("hemostat:stream:");
        println!("{name:>14} {n:>8} {:>10.2} {per:>12.0}", mib(bytes));
        streams_now += bytes as f64;
        if name == "metrics" || name == "heartbeat" {
            month += bytes as f64;
        } else {
            let entries =
                (n as f64 / run_min.max(1.0) * event_retention_min).min(STREAM_MAXLEN as f64);
            month += per * entries;
        }
        if name == "metrics" {
            println!(
                "{:>14} {:>8} {:>10} {:>12.0}   (per watched container and sample)",
                "",
                "",
                "",
                per / args.containers.max(1) as f64
            );
        } else if name != "heartbeat" {
            at_cap += per * STREAM_MAXLEN as f64;
        }
    }
    println!(
        "the other streams at their {STREAM_MAXLEN}-entry cap, at these sizes: {:.1} MiB",
        at_cap / (1024.0 * 1024.0)
    );
    let used = used_memory(&redis).await? as f64;
    let projected = month + (used - streams_now).max(0.0);
    println!(
        "a month at this run's rates ({STREAM_RETENTION_DAYS}-day retention, the metrics as now): {:.1} MiB, {:.0} % of the 384 MiB maxmemory",
        projected / (1024.0 * 1024.0),
        projected * 100.0 / (384.0 * 1024.0 * 1024.0)
    );
    drop(containers);
    Ok(())
}
