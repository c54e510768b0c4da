//! Benchmark: what the monitor costs. With 10, 50 and 100 running watched containers it runs
//! the release `hemostat-monitor` (5 s stats interval, its own redis-server) for a fixed window
//! and reports CPU % of one core over the window (`/proc/<pid>/stat` utime+stime), peak RSS
//! (`VmHWM`), and the stats rounds from its `/metrics` (time per round, overruns). Then each
//! other agent's idle RSS.
//!
//! Run with `scripts/bench-monitor-cost.sh` (builds in release first). Not part of the test run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use hemostat_tests::bench::{self, Agent, clock_ticks, cpu_ticks, status_kb};
use hemostat_tests::{Patient, PatientSpec, TestRedis, random_id};

#[derive(Parser)]
#[command(about = "the monitor's CPU, memory and stats-round time vs container count")]
struct Args {
    /// Measurement window per step (after a warm-up).
    #[arg(long, default_value = "60s", value_parser = hemostat_common::config::parse_duration)]
    window: Duration,
    /// Warm-up before each window (the first listing, inspects and stats rounds).
    #[arg(long, default_value = "6s", value_parser = hemostat_common::config::parse_duration)]
    warmup: Duration,
    /// Running containers per step (ascending; containers are reused across steps).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 50, 100])]
    counts: Vec<usize>,
    /// The monitor's stats interval.
    #[arg(long, default_value = "5s")]
    stats_interval: String,
    /// How long the other agents idle before their RSS is read.
    #[arg(long, default_value = "10s", value_parser = hemostat_common::config::parse_duration)]
    idle: Duration,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// [`bench::agent`] listening on `port`, for its `/metrics`.
fn agent(
    dir: &Path,
    name: &str,
    redis: &TestRedis,
    port: u16,
    env: &[(&str, &str)],
) -> anyhow::Result<Agent> {
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec![("HEMOSTAT_LISTEN", listen.as_str())];
    all.extend_from_slice(env);
    bench::agent(dir, name, redis, &all)
}

fn metrics(port: u16) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The value of the first sample line starting with `name` (labels included in `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The histogram's cumulative buckets: (upper bound, count).
fn buckets(text: &str) -> Vec<(String, f64)> {
    let key = "hemostat_monitor_stats_round_seconds_bucket{le=\"";
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(key)?;
            let (le, v) = rest.split_once("\"}")?;
            Some((le.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

struct Row {
    n: usize,
    cpu_pct: f64,
    hwm_mb: f64,
    rss_mb: f64,
    rounds: f64,
    mean_ms: f64,
    bound: String,
    overruns: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let docker = hemostat_tests::docker()
        .await
        .context("docker is required")?;
    hemostat_tests::ensure_patient_image();
    let dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let tck = clock_ticks() as f64;
    let prefix = format!("hscost-{}", random_id());
    let mut patients: Vec<Patient> = Vec::new();
    let mut rows = Vec::new();
    let mut hist_lines = Vec::new();
    for &n in &args.counts {
        let have = patients.len();
        if n > have {
            let docker = docker.clone();
            let started: Vec<Patient> = futures::stream::iter(have..n)
                .map(|i| {
                    let docker = docker.clone();
                    let prefix = prefix.clone();
                    async move {
                        Patient::start(&docker, &prefix, &i.to_string(), PatientSpec::watched(&[]))
                            .await
                    }
                })
                .buffer_unordered(4)
                .collect()
                .await;
            patients.extend(started);
        }
        eprintln!(
            "{n} containers running; monitor warm-up then {:?}",
            args.window
        );
        let redis = TestRedis::start().context("redis-server is required")?;
        let port = free_port()?;
        let monitor = agent(
            &dir,
            "hemostat-monitor",
            &redis,
            port,
            &[("HEMOSTAT_STATS_INTERVAL", &args.stats_interval)],
        )?;
        let pid = monitor.0.id();
        tokio::time::sleep(args.warmup).await;
        let m0 = metrics(port).context("monitor /metrics")?;
        let c0 = cpu_ticks(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(args.window).await;
        let c1 = cpu_ticks(pid)?;
        let secs = t0.elapsed().as_secs_f64();
        let m1 = metrics(port).context("monitor /metrics")?;
        let hwm = status_kb(pid, "VmHWM:")?;
        let rss = status_kb(pid, "VmRSS:")?;
        drop(monitor);

        let sum = "hemostat_monitor_stats_round_seconds_sum";
        let count = "hemostat_monitor_stats_round_seconds_count";
        let rounds = metric(&m1, count) - metric(&m0, count);
        let took = metric(&m1, sum) - metric(&m0, sum);
        // The smallest bucket bound that holds every round of the window.
        let (b0, b1) = (buckets(&m0), buckets(&m1));
        let bound = b1
            .iter()
            .zip(&b0)
            .find(|((_, v1), (_, v0))| v1 - v0 >= rounds)
            .map(|((le, _), _)| le.clone())
            .unwrap_or_else(|| "?".into());
        hist_lines.push(format!(
            "  n={n:<3} stats round buckets over the monitor's life (le: count): {}",
            b1.iter()
                .map(|(le, v)| format!("{le}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        rows.push(Row {
            n,
            cpu_pct: (c1 - c0) as f64 / tck / secs * 100.0,
            hwm_mb: hwm as f64 / 1024.0,
            rss_mb: rss as f64 / 1024.0,
            rounds,
            mean_ms: took / rounds * 1000.0,
            bound,
            overruns: metric(&m1, "hemostat_monitor_stats_round_overruns_total"),
        });
    }

    // Idle agents: started together on one redis, nothing to do.
    eprintln!("idle agents for {:?}", args.idle);
    let redis = TestRedis::start().context("redis-server is required")?;
    let mut idle = Vec::new();
    for (name, env) in [
        (
            "hemostat-analyzer",
            vec![("OPENAI_API_KEY", ""), ("OPENAI_BASE_URL", "")],
        ),
        ("hemostat-responder", vec![]),
        ("hemostat-alert", vec![]),
    ] {
        idle.push((name, agent(&dir, name, &redis, free_port()?, &env)?));
    }
    tokio::time::sleep(args.idle).await;
    let mut idle_rows = Vec::new();
    for (name, a) in &idle {
        let pid = a.0.id();
        idle_rows.push((
            *name,
            status_kb(pid, "VmRSS:")? as f64 / 1024.0,
            status_kb(pid, "VmHWM:")? as f64 / 1024.0,
        ));
    }
    drop(idle);
    eprintln!("removing {} containers", patients.len());
    drop(patients);

    println!(
        "monitor cost, stats every {}, {:.0} s window after {:.0} s warm-up (CPU % of one core)",
        args.stats_interval,
        args.window.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    println!(
        "{:>10} {:>7} {:>12} {:>12} {:>7} {:>14} {:>14} {:>9}",
        "containers",
        "CPU %",
        "peak RSS MB",
        "RSS MB end",
        "rounds",
        "round mean ms",
        "all rounds ≤",
        "overruns"
    );
    for r in &rows {
        println!(
            "{:>10} {:>7.2} {:>12.1} {:>12.1} {:>7.0} {:>14.1} {:>13}s {:>9.0}",
            r.n, r.cpu_pct, r.hwm_mb, r.rss_mb, r.rounds, r.mean_ms, r.bound, r.overruns
        );
    }
    for l in hist_lines {
        println!("{l}");
    }
    println!(
        "idle agents after {:.0} s (one redis, no work)",
        args.idle.as_secs_f64()
    );
    for (name, rss, hwm) in idle_rows {
        println!("{name:<20} RSS {rss:>5.1} MB  peak {hwm:>5.1} MB");
    }
    Ok(())
}
