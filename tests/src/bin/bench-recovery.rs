//! Benchmark: time to recovery. A watched container is killed; hemostat's full pipeline
//! (monitor → analyzer rules → responder restart) brings it back. Compared with a plain
//! `docker restart -t 0` of the same kind of container in the same run.
//!
//! Runs the real release binaries of the monitor, analyzer (rules only) and responder against a
//! private redis-server and the real Docker engine. For each kill it measures, from the
//! container's `State.FinishedAt` (the engine's record of the death) to Docker's `start` event
//! for the same container (the engine's record of it running again), plus the same from the
//! moment the harness asked for the kill.
//!
//! A third series kills containers while another container waits out a 120 s restart backoff:
//! its wait is a due time in Redis, so it holds up nobody.
//!
//! Run with `scripts/bench-recovery.sh` (builds in release first). Not part of the test run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    RestartContainerOptionsBuilder,
};
use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use futures::StreamExt;
use hemostat_tests::bench;
use hemostat_tests::{Patient, PatientSpec, TestRedis, random_id};

#[derive(Parser)]
#[command(about = "kill → running again: hemostat's pipeline vs docker restart")]
struct Args {
    /// How many containers to kill and let hemostat restart.
    #[arg(long, default_value_t = 30)]
    kills: usize,
    /// How many containers to `docker restart -t 0` for the baseline.
    #[arg(long, default_value_t = 30)]
    restarts: usize,
    /// How many containers to kill while another container waits in a restart backoff.
    #[arg(long, default_value_t = 30)]
    waiting_kills: usize,
    /// Pause after each measurement, so each one is of one container, not a storm.
    #[arg(long, default_value = "500ms", value_parser = hemostat_common::config::parse_duration)]
    gap: Duration,
}

/// One kill through hemostat: (FinishedAt → start event, FinishedAt → StartedAt, kill request →
/// start event), in ms.
type Timed = (f64, f64, f64);

/// Kills a fresh watched container and times its way back through the pipeline.
async fn kill_and_time(
    docker: &Docker,
    events: &mut (
             impl futures::Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>>
             + Unpin
         ),
    prefix: &str,
    name: &str,
    keep: &mut Vec<Patient>,
) -> anyhow::Result<Timed> {
    let p = Patient::start(docker, prefix, name, PatientSpec::watched(&[])).await;
    // Let the monitor see it start (and cache its state from a live inspect).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Utc::now();
    let kill = {
        let docker = docker.clone();
        let id = p.id.clone();
        tokio::spawn(async move {
            let opts = KillContainerOptionsBuilder::new().signal("KILL").build();
            docker.kill_container(&id, Some(opts)).await
        })
    };
    let wait = Duration::from_secs(15);
    let until = Instant::now() + wait;
    let running_at: DateTime<Utc> = loop {
        let left = until.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.next())
            .await
            .with_context(|| format!("{} not running again within {wait:?}", p.name))?
            .context("docker events ended")??;
        let id = ev.actor.as_ref().and_then(|a| a.id.as_deref());
        let Some(nanos) = ev.time_nano else { continue };
        let t = Utc.timestamp_nanos(nanos);
        if id == Some(p.id.as_str()) && t > asked {
            break t;
        }
    };
    kill.await??;
    let s = state(docker, &p.id).await?;
    let timed = (
        ms(running_at - s.finished),
        ms(s.started - s.finished),
        ms(running_at - asked),
    );
    keep.push(p);
    Ok(timed)
}

/// Prints one row and returns its p50.
fn report(name: &str, v: Vec<f64>) -> f64 {
    bench::latency_row(name, 56, v)
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

struct State {
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    running: bool,
}

async fn state(docker: &Docker, id: &str) -> anyhow::Result<State> {
    let s = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?
        .state
        .context("state")?;
    Ok(State {
        started: s.started_at.context("started_at")?.parse()?,
        finished: s.finished_at.context("finished_at")?.parse()?,
        running: s.running.unwrap_or(false),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis = TestRedis::start().context("redis-server is required")?;
    let docker = hemostat_tests::docker()
        .await
        .context("docker is required")?;
    hemostat_tests::ensure_patient_image();

    let dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let _monitor = bench::agent(&dir, "hemostat-monitor", &redis, &[])?;
    let _analyzer = bench::agent(
        &dir,
        "hemostat-analyzer",
        &redis,
        &[("OPENAI_API_KEY", ""), ("OPENAI_BASE_URL", "")],
    )?;
    // Each kill is of a fresh container, so the per-container backoff and breaker never apply
    // to it (the long backoff is for the one container that waits in it); the host-wide guards
    // (storm, write rate) are opened so that 30 kills in a minute are not a storm: this
    // measures the path, not the guards.
    let _responder = bench::agent(
        &dir,
        "hemostat-responder",
        &redis,
        &[
            ("HEMOSTAT_BACKOFF_INITIAL", "120s"),
            ("HEMOSTAT_BACKOFF_MAX", "300s"),
            ("HEMOSTAT_STORM_THRESHOLD", "1000"),
            ("HEMOSTAT_STORM_WINDOW", "1s"),
            ("HEMOSTAT_DOCKER_WRITE_RATE", "100000"),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bench::groups_ready(
        &redis,
        &[
            ("hemostat:stream:health_alert", "analyzer"),
            ("hemostat:stream:remediation_needed", "responder:bench"),
        ],
    )
    .await
    {
        if Instant::now() > deadline {
            bail!("the analyzer and responder did not create their consumer groups in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let prefix = format!("hsrec-{}", random_id());
    // Docker's `start` events for our containers (the engine's time of "running again").
    let mut filters = HashMap::new();
    filters.insert("type", vec!["container"]);
    filters.insert("event", vec!["start"]);
    let label = format!("hemostat.test={prefix}");
    filters.insert("label", vec![label.as_str()]);
    let mut events = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));

    // The baseline's containers are the same image and command, outside hemostat's scope, so
    // hemostat never acts on them.
    let mut plain = PatientSpec::watched(&[]);
    plain
        .labels
        .insert("hemostat.enable".into(), "false".into());

    let mut keep = Vec::new();
    let mut pipeline_from_death = Vec::new();
    let mut pipeline_started = Vec::new();
    let mut pipeline_from_kill = Vec::new();
    let mut restart_call = Vec::new();
    let mut restart_gap = Vec::new();
    let rounds = args.kills.max(args.restarts);
    for i in 0..rounds {
        if i < args.kills {
            let (death, started, kill) =
                kill_and_time(&docker, &mut events, &prefix, &format!("k{i}"), &mut keep).await?;
            pipeline_from_death.push(death);
            pipeline_started.push(started);
            pipeline_from_kill.push(kill);
            tokio::time::sleep(args.gap).await;
        }
        if i < args.restarts {
            let p = Patient::start(&docker, &prefix, &format!("r{i}"), plain.clone()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t0 = Instant::now();
            let opts = RestartContainerOptionsBuilder::new().t(0).build();
            docker.restart_container(&p.id, Some(opts)).await?;
            let s = loop {
                let s = state(&docker, &p.id).await?;
                if s.running && s.started > s.finished {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            restart_call.push(t0.elapsed().as_secs_f64() * 1000.0);
            restart_gap.push(ms(s.started - s.finished));
            keep.push(p);
            tokio::time::sleep(args.gap).await;
        }
        eprint!("\r{}/{rounds} rounds", i + 1);
    }
    eprintln!();

    // The same kills while another container waits out a 120 s restart backoff: a container
    // that dies 1 s after every start, restarted once at once, and owed 120 s before the next.
    let mut waiting_from_death = Vec::new();
    let mut waiting_from_kill = Vec::new();
    if args.waiting_kills > 0 {
        let looping = Patient::start(
            &docker,
            &prefix,
            "looping",
            PatientSpec::watched(&["run", "--exit-code", "1", "--after", "1"]),
        )
        .await;
        // Its first death is restarted at once; the second one must wait.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let backoff: i64 = {
                let mut conn = redis.conn().await;
                let ids: Vec<String> = redis::cmd("ZRANGE")
                    .arg("hemostat:jobs:bench")
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await?;
                let mut n = 0;
                for id in ids {
                    let guard: Option<String> = redis::cmd("HGET")
                        .arg(format!("hemostat:job:bench:{id}"))
                        .arg("guard")
                        .query_async(&mut conn)
                        .await?;
                    n += i64::from(guard.as_deref() == Some("backoff"));
                }
                n
            };
            if backoff > 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} never waited in backoff", looping.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let waiting_since = Instant::now();
        for i in 0..args.waiting_kills {
            let (death, _, kill) =
                kill_and_time(&docker, &mut events, &prefix, &format!("w{i}"), &mut keep).await?;
            waiting_from_death.push(death);
            waiting_from_kill.push(kill);
            tokio::time::sleep(args.gap).await;
            eprint!(
                "\r{}/{} kills while another waits",
                i + 1,
                args.waiting_kills
            );
        }
        eprintln!();
        if waiting_since.elapsed() >= Duration::from_secs(110) {
            bail!("the series outlasted the backoff; use fewer --waiting-kills");
        }
        let still = state(&docker, &looping.id).await?;
        if still.running {
            bail!("{} was restarted during its backoff", looping.name);
        }
        keep.push(looping);
    }
    drop(events);
    drop(_responder);
    drop(_analyzer);
    drop(_monitor);

    println!(
        "kill → running again ({} kills through hemostat, {} plain docker restarts, interleaved)",
        pipeline_from_death.len(),
        restart_call.len()
    );
    let from_death = report("hemostat: FinishedAt → start event", pipeline_from_death);
    report("hemostat: FinishedAt → StartedAt", pipeline_started);
    let from_kill = report("hemostat: kill request → start event", pipeline_from_kill);
    let call = report("docker restart -t 0: call → running", restart_call);
    if !waiting_from_death.is_empty() {
        report(
            "hemostat, another waiting in backoff: FinishedAt → start",
            waiting_from_death,
        );
        report(
            "hemostat, another waiting in backoff: kill → start",
            waiting_from_kill,
        );
    }
    let gap = report("docker restart -t 0: FinishedAt → StartedAt", restart_gap);
    println!(
        "p50 ratio, kill request → running: hemostat / docker restart = {:.2}x ({:+.1} ms)",
        from_kill / call,
        from_kill - call
    );
    println!(
        "p50 ratio, death → running: hemostat / docker restart = {:.2}x ({:+.1} ms)",
        from_death / gap,
        from_death - gap
    );
    drop(keep);
    Ok(())
}
