//! Benchmark: container problem → `hemostat:health_alert` received by a subscriber.
//!
//! Runs the real release `hemostat-monitor` binary against a private redis-server and the real
//! Docker engine and measures two things, each printed as its own section, with latency
//! percentiles and what a 5 s and a 30 s poller would give on the same events:
//!
//! 1. Deaths (`--kills`): patient containers are `SIGKILL`ed one at a time; the `died` alert is
//!    timed
//!    - from Docker's `die` event time (what the monitor can possibly react to),
//!    - from the container's `FinishedAt` (the moment Docker recorded the process's death),
//!    - from the moment this harness asked Docker to kill the container.
//! 2. Health transitions (`--unhealthy`): patient containers with a health check in exec form
//!    (`/patient probe`, `--health-interval`, 1 retry) turn unhealthy one at a time; the
//!    `unhealthy` alert is timed
//!    - from Docker's `health_status: unhealthy` event time (`timeNano`, which the monitor copies
//!      into the alert's `docker_event_time`),
//!    - from the end of the failing probe (the engine's health log, read by inspect),
//!
//!    and, as a floor, the same event's delay to this harness's own Docker events subscription.
//!
//! `--kills 0` or `--unhealthy 0` skips a section. Run with `scripts/bench-detection.sh`
//! (builds in release first). Not part of the test run. Every container it starts is removed on
//! success, on error and on Ctrl-C.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
};
use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use futures::{Stream, StreamExt};
use hemostat_common::config::parse_duration;
use hemostat_common::events::{AlertKind, Detection, Envelope, Payload};
use hemostat_tests::{Patient, PatientSpec, TestRedis, container_alert, random_id};

#[derive(Parser)]
#[command(about = "container death and health check turning unhealthy → health_alert latency")]
struct Args {
    /// How many containers to kill (0 skips the death measurement).
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// How many containers to turn unhealthy (0 skips the health measurement).
    #[arg(long, default_value_t = 100)]
    unhealthy: usize,
    /// Containers started per batch (both measurements).
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Pause between kills, so each measurement is of one death, not a storm.
    #[arg(long, default_value = "150ms", value_parser = parse_duration)]
    gap: Duration,
    /// Health check interval of the patients that turn unhealthy (retries 1: the first failing
    /// probe marks the container unhealthy).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    health_interval: Duration,
    /// From a health batch's first container start to its first planned transition: covers
    /// starting the batch, so no transition happens while containers are still being started.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    lead: Duration,
    /// Between planned transitions. A container turns unhealthy at its first probe after its
    /// planned time, i.e. up to one interval plus a probe later: a stagger above the interval
    /// keeps transitions one at a time.
    #[arg(long, default_value = "1300ms", value_parser = parse_duration)]
    stagger: Duration,
    /// How long to wait for a transition's alert after the container was due to turn
    /// unhealthy.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

/// The monitor child process, killed (and reaped) on drop, also on error.
struct Monitor(Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints one row and returns its p50.
fn report(name: &str, v: Vec<f64>) -> f64 {
    hemostat_tests::bench::latency_row(name, 40, v)
}

/// What a poller would give on the same events: the event lands uniformly within a poll
/// interval, so the expected wait is half the interval and the worst case a whole one.
fn report_pollers(hemostat_p50: f64) {
    let polls: [(&str, f64); 2] = [
        ("docker-autoheal (5 s poll)", 5000.0),
        ("HemoStat prototype (30 s poll)", 30_000.0),
    ];
    for (name, interval) in polls {
        println!(
            "{name:<40} expected {:>7.0} ms, worst {:>7.0} ms  (hemostat p50 is {:.0}x faster than its expected)",
            interval / 2.0,
            interval,
            (interval / 2.0) / hemostat_p50
        );
    }
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// Docker's timestamps (`FinishedAt`, health log `End`) are RFC 3339 with nanoseconds, in UTC
/// or with the daemon's offset.
fn docker_time(raw: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(raw)
        .with_context(|| format!("docker timestamp {raw:?}"))?
        .with_timezone(&Utc))
}

async fn next_message<S>(messages: &mut S, left: Duration) -> anyhow::Result<Option<redis::Msg>>
where
    S: Stream<Item = redis::Msg> + Unpin,
{
    match tokio::time::timeout(left, messages.next()).await {
        Err(_) => Ok(None),
        Ok(Some(m)) => Ok(Some(m)),
        Ok(None) => bail!("the redis subscription ended"),
    }
}

fn decode(msg: &redis::Msg) -> anyhow::Result<Envelope> {
    let payload: String = msg
        .get_payload()
        .context("a health_alert message that is not a string")?;
    Envelope::from_json(&payload).with_context(|| format!("decode health_alert {payload:?}"))
}

struct DeathSample {
    from_event_ms: f64,
    from_finished_ms: f64,
    from_kill_request_ms: f64,
}

async fn measure_deaths<S>(
    docker: &Docker,
    messages: &mut S,
    args: &Args,
    prefix: &str,
) -> anyhow::Result<Vec<DeathSample>>
where
    S: Stream<Item = redis::Msg> + Unpin,
{
    let mut samples = Vec::new();
    let mut done = 0;
    while done < args.kills {
        let n = args.batch.min(args.kills - done);
        let mut batch = Vec::new();
        for i in 0..n {
            let suffix = format!("k{}", done + i);
            batch.push(
                Patient::try_start(docker, prefix, &suffix, PatientSpec::watched(&[])).await?,
            );
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
                let msg = next_message(messages, left)
                    .await?
                    .with_context(|| format!("no died alert for {} within 10 s", p.name))?;
                let received = Utc::now();
                let env = decode(&msg)?;
                if container_alert(&env)
                    .is_some_and(|a| a.container.id == p.id && a.kind == AlertKind::Died)
                {
                    break (env, received);
                }
            };
            kill.await
                .context("the kill task")?
                .with_context(|| format!("kill {}", p.name))?;
            let a = container_alert(&env).context("alert")?;
            let event = a.docker_event_time.with_context(|| {
                format!("the died alert for {} has no docker_event_time", p.name)
            })?;
            // The engine's own record of when the process died.
            let finished = docker
                .inspect_container(&p.id, None::<InspectContainerOptions>)
                .await
                .with_context(|| format!("inspect {}", p.name))?
                .state
                .and_then(|s| s.finished_at)
                .with_context(|| format!("{} has no FinishedAt", p.name))?;
            let finished = docker_time(&finished)?;
            samples.push(DeathSample {
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
    Ok(samples)
}

fn print_deaths(samples: &[DeathSample]) {
    println!(
        "container death → health_alert received by a redis subscriber ({} kills)",
        samples.len()
    );
    report(
        "from docker's die event",
        samples.iter().map(|s| s.from_event_ms).collect(),
    );
    let p50 = report(
        "from FinishedAt (process death)",
        samples.iter().map(|s| s.from_finished_ms).collect(),
    );
    report(
        "from the kill request",
        samples.iter().map(|s| s.from_kill_request_ms).collect(),
    );
    report_pollers(p50);
}

/// One container of a health batch, waiting to turn unhealthy.
struct Pending {
    patient: Patient,
    /// When its patient starts failing its probe.
    due: Instant,
    /// Docker's `health_status: unhealthy` event (`timeNano`) and when this harness's own events
    /// subscription received it.
    event: Option<(i64, DateTime<Utc>)>,
    /// The alert's `docker_event_time` and when the redis subscriber received it.
    alert: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

struct HealthSample {
    from_event_ms: f64,
    from_probe_end_ms: f64,
    to_harness_ms: f64,
    event_nano: i64,
    /// Whether the alert's `docker_event_time` is the event this harness saw (to the µs the
    /// alert carries).
    same_event: bool,
}

struct HealthRun {
    samples: Vec<HealthSample>,
    /// Batches whose starting took longer than `--lead`.
    slow_starts: usize,
}

/// The end of the probe that turned the container unhealthy: the latest failing probe in the
/// engine's health log that ended before the event.
async fn failing_probe_end(
    docker: &Docker,
    p: &Patient,
    event: DateTime<Utc>,
) -> anyhow::Result<DateTime<Utc>> {
    let log = docker
        .inspect_container(&p.id, None::<InspectContainerOptions>)
        .await
        .with_context(|| format!("inspect {}", p.name))?
        .state
        .and_then(|s| s.health)
        .and_then(|h| h.log)
        .unwrap_or_default();
    let mut best: Option<DateTime<Utc>> = None;
    for r in log {
        let (Some(code), Some(end)) = (r.exit_code, r.end) else {
            continue;
        };
        let end = docker_time(&end)?;
        if code != 0 && end <= event && best.is_none_or(|b| end > b) {
            best = Some(end);
        }
    }
    best.with_context(|| {
        format!(
            "no failing probe before the event in {}'s health log",
            p.name
        )
    })
}

async fn measure_unhealthy<S>(
    docker: &Docker,
    messages: &mut S,
    args: &Args,
    prefix: &str,
) -> anyhow::Result<HealthRun>
where
    S: Stream<Item = redis::Msg> + Unpin,
{
    // The check in exec form (a scratch image has no shell), with a 2 s timeout.
    let health_spec = |cmd: Vec<String>| PatientSpec {
        args: cmd,
        health_interval: Some(args.health_interval),
        health_retries: Some(1),
        ..PatientSpec::watched(&[])
    };
    // Our containers' health events, from the engine, as any socket client gets them. `since`
    // makes the engine replay anything that happened before the subscription was up.
    let since = Utc::now();
    let since = format!(
        "{}.{:09}",
        since.timestamp(),
        since.timestamp_subsec_nanos()
    );
    let label = format!("hemostat.test={prefix}");
    let filters = HashMap::from([
        ("type", vec!["container"]),
        ("event", vec!["health_status"]),
        ("label", vec![label.as_str()]),
    ]);
    let mut events = Box::pin(
        docker.events(Some(
            EventsOptionsBuilder::new()
                .since(&since)
                .filters(&filters)
                .build(),
        )),
    );
    // The stream sends its request when first polled: do that now.
    if let Ok(first) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        bail!("unexpected docker event before any container started: {first:?}");
    }

    let mut run = HealthRun {
        samples: Vec::new(),
        slow_starts: 0,
    };
    let mut done = 0;
    while done < args.unhealthy {
        let n = args.batch.min(args.unhealthy - done);
        let t0 = Instant::now();
        let mut batch: Vec<Pending> = Vec::new();
        for i in 0..n {
            let planned = args.lead + args.stagger * i as u32;
            let after = planned.saturating_sub(t0.elapsed());
            let suffix = format!("u{}", done + i);
            let cmd = vec![
                "run".to_owned(),
                "--unhealthy-after".to_owned(),
                format!("{:.3}", after.as_secs_f64()),
            ];
            let patient = Patient::try_start(docker, prefix, &suffix, health_spec(cmd)).await?;
            batch.push(Pending {
                patient,
                due: Instant::now() + after,
                event: None,
                alert: None,
            });
        }
        if t0.elapsed() > args.lead {
            run.slow_starts += 1;
            eprintln!(
                "\nwarning: starting {n} containers took {:.1} s, longer than --lead {:.1} s: \
                 the first transitions overlapped container starts",
                t0.elapsed().as_secs_f64(),
                args.lead.as_secs_f64()
            );
        }

        let mut left = n;
        while left > 0 {
            let waiting = batch
                .iter()
                .filter(|p| p.event.is_none() || p.alert.is_none());
            let deadline = waiting
                .map(|p| p.due + args.health_interval + args.timeout)
                .min()
                .unwrap_or_else(Instant::now);
            let done_id = tokio::select! {
                ev = events.next() => {
                    let received = Utc::now();
                    let ev = ev
                        .context("the docker events stream ended")?
                        .context("docker events")?;
                    let unhealthy = ev.action.as_deref().is_some_and(|a| {
                        a.starts_with("health_status")
                            && a.split(':').nth(1).map(str::trim) == Some("unhealthy")
                    });
                    let id = ev.actor.and_then(|a| a.id).unwrap_or_default();
                    match (unhealthy, ev.time_nano, batch.iter_mut().find(|p| p.patient.id == id)) {
                        (true, Some(nano), Some(p)) if p.event.is_none() => {
                            p.event = Some((nano, received));
                            Some(id)
                        }
                        _ => None,
                    }
                }
                msg = messages.next() => {
                    let received = Utc::now();
                    let env = decode(&msg.context("the redis subscription ended")?)?;
                    match &env.payload {
                        Payload::ContainerUnhealthy(a)
                            if a.kind == AlertKind::Unhealthy && !a.reminder =>
                        {
                            match batch.iter_mut().find(|p| p.patient.id == a.container.id) {
                                Some(p) if p.alert.is_none() => {
                                    if a.detected_by != Detection::Event {
                                        bail!(
                                            "the unhealthy alert for {} was detected by {:?}, \
                                             not from the event",
                                            p.patient.name,
                                            a.detected_by
                                        );
                                    }
                                    let event = a.docker_event_time.with_context(|| {
                                        format!(
                                            "the unhealthy alert for {} has no docker_event_time",
                                            p.patient.name
                                        )
                                    })?;
                                    p.alert = Some((event, received));
                                    Some(a.container.id.clone())
                                }
                                _ => None,
                            }
                        }
                        _ => None,
                    }
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    let late: Vec<String> = batch
                        .iter()
                        .filter(|p| {
                            (p.event.is_none() || p.alert.is_none())
                                && p.due + args.health_interval + args.timeout <= Instant::now()
                        })
                        .map(|p| {
                            format!(
                                "{} (docker reported it unhealthy: {}; alert received: {})",
                                p.patient.name,
                                if p.event.is_some() { "yes" } else { "no" },
                                if p.alert.is_some() { "yes" } else { "no" },
                            )
                        })
                        .collect();
                    bail!(
                        "no unhealthy health_alert within {:?} after the health check was due to \
                         fail (one --health-interval after the patient started failing), for: {}",
                        args.timeout,
                        late.join(", ")
                    );
                }
            };
            let Some(id) = done_id else { continue };
            let Some(p) = batch.iter().find(|p| p.patient.id == id) else {
                continue;
            };
            let (Some((nano, harness_received)), Some((alert_event, alert_received))) =
                (p.event, p.alert)
            else {
                continue;
            };
            let event = Utc.timestamp_nanos(nano);
            // Read the health log now, while the failing probe is still among its last five.
            let probe_end = failing_probe_end(docker, &p.patient, event).await?;
            run.samples.push(HealthSample {
                from_event_ms: ms(alert_received - alert_event),
                from_probe_end_ms: ms(alert_received - probe_end),
                to_harness_ms: ms(harness_received - event),
                event_nano: nano,
                same_event: (alert_event - event)
                    .num_microseconds()
                    .is_some_and(|d| d.abs() < 1),
            });
            left -= 1;
            eprint!("\r{}/{} transitions", done + n - left, args.unhealthy);
        }
        done += n;
        drop(batch);
    }
    eprintln!();
    Ok(run)
}

fn print_unhealthy(run: &HealthRun, args: &Args) {
    let s = &run.samples;
    println!(
        "health check turning unhealthy → health_alert (kind unhealthy) received by a redis subscriber ({} transitions)",
        s.len()
    );
    let p50 = report(
        "from docker's health_status event",
        s.iter().map(|s| s.from_event_ms).collect(),
    );
    report(
        "from the failing probe's end",
        s.iter().map(|s| s.from_probe_end_ms).collect(),
    );
    report(
        "event → this harness's docker socket",
        s.iter().map(|s| s.to_harness_ms).collect(),
    );
    report_pollers(p50);
    println!(
        "(a poller reading health state sees an unhealthy container at its next poll after \
         Docker marked it: expected half its interval, worst the whole; the ratio is to \
         hemostat's p50 from the health_status event)"
    );
    let mut times: Vec<i64> = s.iter().map(|s| s.event_nano).collect();
    times.sort_unstable();
    let closest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .min()
        .map_or(f64::NAN, |d| d as f64 / 1e6);
    println!(
        "(check in exec form /patient probe every {:.1} s, retries 1; {} per batch, planned \
         {:.1} s apart; the closest two health_status events were {closest:.0} ms apart)",
        args.health_interval.as_secs_f64(),
        args.batch,
        args.stagger.as_secs_f64()
    );
    let mismatched = s.iter().filter(|s| !s.same_event).count();
    if mismatched > 0 {
        println!(
            "WARNING: {mismatched} alerts carry a docker_event_time other than the event this \
             harness saw"
        );
    }
    if run.slow_starts > 0 {
        println!(
            "WARNING: in {} batches, starting the containers took longer than --lead, so some \
             transitions overlapped container starts",
            run.slow_starts
        );
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.health_interval.is_zero() {
        bail!("--health-interval must be above zero");
    }
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
    let _monitor = Monitor(
        Command::new(&monitor_bin)
            .env("REDIS_URL", redis.url())
            .env("HEMOSTAT_LISTEN", "127.0.0.1:0")
            .env("HEMOSTAT_HOST_ID", "bench")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start the monitor")?,
    );

    // Subscribe the way a user would (`redis-cli subscribe hemostat:health_alert`).
    let mut pubsub = redis
        .client()
        .get_async_pubsub()
        .await
        .context("redis pub/sub connection")?;
    pubsub
        .subscribe("hemostat:health_alert")
        .await
        .context("subscribe to hemostat:health_alert")?;
    let mut messages = pubsub.into_on_message();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let prefix = format!("hsbench-{}", random_id());
    if args.kills > 0 {
        let deaths = measure_deaths(&docker, &mut messages, &args, &prefix).await?;
        print_deaths(&deaths);
    }
    if args.unhealthy > 0 {
        let health = measure_unhealthy(&docker, &mut messages, &args, &prefix).await?;
        if args.kills > 0 {
            println!();
        }
        print_unhealthy(&health, &args);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // On Ctrl-C the measurement is dropped, and with it every container and the monitor.
    let result = tokio::select! {
        r = run(args) => r,
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => Err(anyhow::anyhow!("interrupted")),
            Err(e) => Err(anyhow::Error::new(e).context("listen for Ctrl-C")),
        },
    };
    if result.is_err() {
        // End the progress line before the error.
        eprintln!();
    }
    result
}
