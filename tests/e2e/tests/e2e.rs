//! End to end: build the images with no registry, `compose up` the whole stack with the demo
//! profile and a Slack-protocol sink, run the chaos scripts, and check what users would check:
//! Redis channels and streams, the audit stream and the messages "Slack" received. Then
//! `compose down -v` and nothing is left behind.
//!
//! Run by `scripts/test.sh` after the unit and integration tests (it is a separate crate,
//! excluded from the main `cargo test` run). Bounded: every wait has a deadline, and the
//! whole test takes a few minutes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hemostat_common::events::{Action, Channel, Envelope, EscalationKind, Outcome, Payload};
use hemostat_tests::{StreamReader, container_alert, in_ci, random_id, repo_root, require};

const WAIT: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The compose project under test; torn down on drop, whatever happened.
struct Stack {
    project: String,
    env: HashMap<String, String>,
    root: PathBuf,
    tags: Vec<String>,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(self.root.join("scripts/compose.sh"))
            .args([
                "-p",
                &self.project,
                "-f",
                "docker-compose.yml",
                "-f",
                "tests/e2e/compose.e2e.yml",
                "--profile",
                "demo",
            ])
            .args(args)
            .current_dir(&self.root)
            .envs(&self.env)
            .stdin(Stdio::null());
        cmd.output().expect("run compose")
    }

    fn chaos(&self, script: &str, extra_env: &[(&str, &str)]) -> String {
        let out = Command::new("bash")
            .arg(self.root.join("scripts/chaos").join(script))
            .current_dir(&self.root)
            .envs(&self.env)
            .env("HEMOSTAT_PROJECT", &self.project)
            .envs(extra_env.iter().copied())
            .output()
            .expect("run chaos script");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "scripts/chaos/{script} failed:\n{text}"
        );
        assert!(
            text.contains("expect:"),
            "scripts/chaos/{script} must say what to expect:\n{text}"
        );
        eprintln!("{text}");
        text
    }

    /// The container of a compose service (`demo-web`).
    fn container(&self, service: &str) -> String {
        let out = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        out.lines().next().unwrap_or_default().to_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the agents said, for whoever reads the failure: the newest lines of each.
            for service in ["monitor", "analyzer", "responder", "alert"] {
                let out = Command::new("docker")
                    .args(["logs", "--tail", "150", &self.container(service)])
                    .output();
                if let Ok(out) = out {
                    eprintln!(
                        "---- {service} (last 150 lines) ----\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let down = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
        if !down.status.success() {
            eprintln!(
                "compose down failed: {}",
                String::from_utf8_lossy(&down.stderr)
            );
        }
        let _ = Command::new("bash")
            .arg(self.root.join("scripts/chaos/cleanup"))
            .env("HEMOSTAT_PROJECT", &self.project)
            .output();
        for tag in &self.tags {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn inspect(id: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, id]).trim().to_owned()
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Bodies the Slack sink received.
fn slack_messages(port: u16) -> Vec<String> {
    let body = http_get(port, "/received");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn result_for<'a>(
    e: &'a Envelope,
    name: &str,
) -> Option<&'a hemostat_common::events::RemediationResult> {
    match &e.payload {
        Payload::RemediationComplete(r) if r.container.as_ref().is_some_and(|c| c.name == name) => {
            Some(r)
        }
        _ => None,
    }
}

fn escalation(e: &Envelope) -> Option<&hemostat_common::events::Escalation> {
    match &e.payload {
        Payload::Escalation(x) => Some(x),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stack_heals_what_it_should_and_leaves_alone_what_it_must() {
    if Command::new("docker")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        require("docker", "docker version failed");
        return;
    }
    // hemostat acts on every container labelled hemostat.enable=true on this engine: other
    // tests' containers would be remediated by this stack and skew its storm guard.
    let foreign = docker(&["ps", "-aq", "--filter", "label=hemostat.enable=true"]);
    assert!(
        foreign.trim().is_empty(),
        "containers labelled hemostat.enable=true already exist on this engine; the end-to-end \
         test needs the engine to itself:\n{foreign}"
    );
    let root = repo_root();
    let id = random_id();
    let project = format!("hse2e{id}");
    let tags = vec![
        format!("hemostat:e2e-{id}"),
        format!("hemostat-patient:e2e-{id}"),
        format!("hemostat-redis:e2e-{id}"),
        format!("hemostat-docker-proxy:e2e-{id}"),
    ];
    let (redis_port, sink_port, dash_port) = (free_port(), free_port(), free_port());

    // 1. Images, with no registry.
    let started = Instant::now();
    let build = Command::new("bash")
        .arg(root.join("scripts/build-images.sh"))
        .env("HEMOSTAT_IMAGE", &tags[0])
        .env("PATIENT_IMAGE", &tags[1])
        .env("REDIS_IMAGE", &tags[2])
        .env("DOCKER_PROXY_IMAGE", &tags[3])
        .output()
        .expect("build images");
    assert!(
        build.status.success(),
        "build-images.sh failed:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    eprintln!("images built in {:?}", started.elapsed());

    let env: HashMap<String, String> = [
        ("HEMOSTAT_IMAGE", tags[0].as_str()),
        ("PATIENT_IMAGE", tags[1].as_str()),
        ("REDIS_IMAGE", tags[2].as_str()),
        ("DOCKER_PROXY_IMAGE", tags[3].as_str()),
        ("REDIS_PASSWORD", "e2e-pass"),
        // One Redis user per service, as a production .env has them.
        ("HEMOSTAT_MONITOR_REDIS_PASSWORD", "e2e-monitor"),
        ("HEMOSTAT_ANALYZER_REDIS_PASSWORD", "e2e-analyzer"),
        ("HEMOSTAT_RESPONDER_REDIS_PASSWORD", "e2e-responder"),
        ("HEMOSTAT_ALERT_REDIS_PASSWORD", "e2e-alert"),
        ("HEMOSTAT_DASHBOARD_REDIS_PASSWORD", "e2e-dashboard"),
        ("HEMOSTAT_REDIS_PORT", &redis_port.to_string()),
        ("HEMOSTAT_DASHBOARD_PORT", &dash_port.to_string()),
        ("E2E_SINK_PORT", &sink_port.to_string()),
        (
            "SLACK_WEBHOOK_URL",
            "http://slack-sink:8080/services/T0/B0/e2e",
        ),
        ("HEMOSTAT_GROUP_WAIT", "1s"),
        ("HEMOSTAT_STATS_INTERVAL", "5s"),
        ("HEMOSTAT_BACKOFF_INITIAL", "1s"),
        ("HEMOSTAT_BACKOFF_MAX", "2s"),
        ("HEMOSTAT_BREAKER_THRESHOLD", "3"),
        ("HEMOSTAT_CRASH_LOOP_BUDGET", "50"),
        ("HEMOSTAT_STORM_THRESHOLD", "3"),
        ("HEMOSTAT_STORM_WINDOW", "20s"),
        ("HEMOSTAT_VERIFY_TIMEOUT", "20s"),
        // The demo targets behave until a chaos script breaks them.
        ("DEMO_CRASH_AFTER", "100000"),
        ("DEMO_LEAK_MB_PER_SEC", "1"),
        ("DEMO_LEAK_MAX_MB", "4"),
        ("DEMO_CPU_SECS", "0.1"),
        ("DEMO_UNHEALTHY_AFTER", "100000"),
        ("DEMO_FLAP_PERIOD", "100000"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let stack = Stack {
        project,
        env,
        root,
        tags,
    };

    // 2. Up, and healthy.
    let up = stack.compose(&["up", "-d"]);
    assert!(
        up.status.success(),
        "compose up failed:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    for service in [
        "redis",
        "monitor",
        "analyzer",
        "responder",
        "alert",
        "dashboard",
    ] {
        let id = stack.container(service);
        eventually(&format!("{service} healthy"), || {
            inspect(&id, "{{.State.Health.Status}}") == "healthy"
        })
        .await;
    }
    // The Docker API proxies (no health check: nothing but HAProxy in their image) are the only
    // containers with the Docker socket.
    for service in ["docker-read", "docker-write"] {
        let id = stack.container(service);
        eventually(&format!("{service} running"), || {
            inspect(&id, "{{.State.Running}}") == "true"
        })
        .await;
    }
    for service in [
        "redis",
        "monitor",
        "analyzer",
        "responder",
        "alert",
        "dashboard",
        "docker-read",
        "docker-write",
    ] {
        let mounts = inspect(
            &stack.container(service),
            "{{range .Mounts}}{{.Source}} {{end}}",
        );
        assert_eq!(
            mounts.contains("docker.sock"),
            service.starts_with("docker-"),
            "{service} mounts: {mounts}"
        );
    }
    let client = redis::Client::open(format!("redis://:e2e-pass@127.0.0.1:{redis_port}")).unwrap();
    // Agents' consumer groups start at the end of their streams: wait until they exist.
    {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for stream in [
            "hemostat:stream:health_alert",
            "hemostat:stream:remediation_needed",
            "hemostat:stream:remediation_complete",
        ] {
            let deadline = Instant::now() + WAIT;
            loop {
                let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(stream)
                    .query_async(&mut conn)
                    .await;
                if matches!(groups, Ok(redis::Value::Array(ref a)) if !a.is_empty()) {
                    break;
                }
                assert!(Instant::now() < deadline, "no consumer group on {stream}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut health = StreamReader::from_client(client.clone(), Channel::HealthAlert);
    let mut verdicts = StreamReader::from_client(client.clone(), Channel::RemediationNeeded);
    let mut results = StreamReader::from_client(client.clone(), Channel::RemediationComplete);
    let mut alerts = StreamReader::from_client(client.clone(), Channel::Alerts);

    // 3. killed → restarted and verified, with a Slack message.
    let web = stack.container("demo-web");
    let web_name = inspect(&web, "{{.Name}}")
        .trim_start_matches('/')
        .to_owned();
    stack.chaos("kill", &[]);
    let e = results
        .wait_for(WAIT, "the killed web server's remediation", |e| {
            result_for(e, &web_name).is_some()
        })
        .await;
    let r = result_for(&e, &web_name).unwrap();
    assert_eq!(
        (r.action, r.outcome),
        (Action::Restart, Outcome::Success),
        "{r:#?}"
    );
    assert!(r.verification.as_ref().is_some_and(|v| v.running), "{r:#?}");
    assert_eq!(inspect(&web, "{{.State.Running}}"), "true");
    eventually("a Slack message about the restart", || {
        slack_messages(sink_port)
            .iter()
            .any(|m| m.contains(&web_name) && m.contains("Restart"))
    })
    .await;

    // 4. stopped by a person → left alone.
    eventually("web healthy again", || {
        inspect(&web, "{{.State.Health.Status}}") == "healthy"
    })
    .await;
    let before = results
        .seen
        .iter()
        .filter(|e| result_for(e, &web_name).is_some())
        .count();
    stack.chaos("stop", &[]);
    health
        .wait_for(WAIT, "the stop as a person's action", |e| {
            e.event_type() == "container_user_action"
                && container_alert(e).is_some_and(|a| a.container.name == web_name)
        })
        .await;
    let after = results
        .collect_for(Duration::from_secs(10), |e| {
            result_for(e, &web_name).is_some()
        })
        .await;
    assert_eq!(
        after.len(),
        before,
        "the responder acted on a person's stop: {after:#?}"
    );
    assert_eq!(
        inspect(&web, "{{.State.Running}}"),
        "false",
        "left alone, still stopped"
    );
    docker(&["start", &web]);

    // 4b. a maintenance window: the killed web server is held down and nobody is told while it
    // holds; when it ends, one summary message, and the web server is healed.
    eventually("web running again", || {
        inspect(&web, "{{.State.Running}}") == "true"
    })
    .await;
    let opened = Instant::now();
    // Results published before the window (the restart of step 3) do not count.
    let opened_at = std::time::SystemTime::now();
    stack.chaos("maintenance", &[("MAINTENANCE_FOR", "15s")]);
    let e = results
        .wait_for(WAIT, "the held web server's remediation", |e| {
            result_for(e, &web_name).is_some()
                && std::time::SystemTime::from(e.timestamp) > opened_at
        })
        .await;
    let r = result_for(&e, &web_name).unwrap();
    assert_eq!(
        (r.action, r.outcome),
        (Action::Restart, Outcome::Success),
        "{r:#?}"
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(14),
        "healed only once the window ended, not after {:?}",
        opened.elapsed()
    );
    eventually("one summary of the maintenance window", || {
        slack_messages(sink_port)
            .iter()
            .any(|m| m.contains("Maintenance window") && m.contains(&web_name))
    })
    .await;
    assert_eq!(
        slack_messages(sink_port)
            .iter()
            .filter(|m| m.contains("Maintenance window"))
            .count(),
        1
    );

    // 5. a protected container killed → not touched, escalated.
    let protected = stack.container("demo-protected");
    let protected_name = inspect(&protected, "{{.Name}}")
        .trim_start_matches('/')
        .to_owned();
    docker(&["kill", &protected]);
    let e = results
        .wait_for(WAIT, "the protected container's refusal", |e| {
            result_for(e, &protected_name).is_some()
        })
        .await;
    let r = result_for(&e, &protected_name).unwrap();
    assert_eq!(r.outcome, Outcome::Rejected, "{r:#?}");
    assert!(r.reason.contains("protected"), "{}", r.reason);
    alerts
        .wait_for(WAIT, "the protected container's escalation", |e| {
            escalation(e).is_some_and(|x| {
                x.kind == EscalationKind::ProtectedContainer
                    && x.container
                        .as_ref()
                        .is_some_and(|c| c.name == protected_name)
            })
        })
        .await;
    assert_eq!(
        inspect(&protected, "{{.State.Running}}"),
        "false",
        "never touched"
    );

    // 6. injected logs → nothing outside the allow-list, and only the container itself.
    let text = stack.chaos("inject", &[]);
    assert!(text.contains("chaos-inject"));
    let e = verdicts
        .wait_for(WAIT, "the injected container's verdict", |e| {
            match &e.payload {
                Payload::RemediationNeeded(r) => r
                    .container
                    .as_ref()
                    .is_some_and(|c| c.name == "chaos-inject"),
                _ => false,
            }
        })
        .await;
    let Payload::RemediationNeeded(r) = &e.payload else {
        unreachable!()
    };
    assert_eq!(r.action, Action::Restart, "{r:#?}");
    let redis_name = inspect(&stack.container("redis"), "{{.Name}}")
        .trim_start_matches('/')
        .to_owned();
    verdicts.poll().await;
    for e in &verdicts.seen {
        if let Payload::RemediationNeeded(r) = &e.payload {
            assert!(
                r.container.as_ref().is_none_or(|c| c.name != redis_name),
                "redis was targeted: {r:#?}"
            );
        }
    }

    // 7. crash loop → the breaker opens, exactly one escalation.
    stack.chaos("crashloop", &[]);
    alerts
        .wait_for(Duration::from_secs(150), "the crash loop's breaker", |e| {
            escalation(e).is_some_and(|x| {
                x.kind == EscalationKind::CircuitBreakerOpen
                    && x.container
                        .as_ref()
                        .is_some_and(|c| c.name == "chaos-crashloop")
            })
        })
        .await;
    let breakers = alerts
        .collect_for(Duration::from_secs(10), |e| {
            escalation(e).is_some_and(|x| {
                x.kind == EscalationKind::CircuitBreakerOpen
                    && x.container
                        .as_ref()
                        .is_some_and(|c| c.name == "chaos-crashloop")
            })
        })
        .await;
    assert_eq!(breakers.len(), 1, "{breakers:#?}");
    docker(&["rm", "-f", "chaos-crashloop"]);

    // 8. storm → remediation paused, exactly one escalation. Ten at once on a host of about
    // twenty watched containers: a storm is six or more failing together (30 %), so a few
    // restarted before the rest are reported still leave a storm to hold.
    stack.chaos("storm", &[("COUNT", "10")]);
    alerts
        .wait_for(WAIT, "the storm guard", |e| {
            escalation(e).is_some_and(|x| x.kind == EscalationKind::RemediationPaused)
        })
        .await;
    let storms = alerts
        .collect_for(Duration::from_secs(8), |e| {
            escalation(e).is_some_and(|x| x.kind == EscalationKind::RemediationPaused)
        })
        .await;
    assert_eq!(storms.len(), 1, "{storms:#?}");

    // Every decision is in the audit stream.
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let audited: usize = redis::cmd("XLEN")
        .arg("hemostat:stream:audit")
        .query_async(&mut conn)
        .await
        .unwrap();
    results.poll().await;
    assert!(
        audited >= results.seen.len(),
        "audit {audited} < results {}",
        results.seen.len()
    );

    // The stack's Redis users: the dashboard's may not ask for a remediation, and in all of
    // the above Redis refused no service a single command.
    let dash = redis::Client::open(format!(
        "redis://hemostat-dashboard:e2e-dashboard@127.0.0.1:{redis_port}"
    ))
    .unwrap();
    let mut dconn = dash.get_multiplexed_async_connection().await.unwrap();
    let forged: redis::RedisResult<String> = redis::cmd("XADD")
        .arg("hemostat:stream:remediation_needed")
        .arg("*")
        .arg("event_type")
        .arg("remediation_needed")
        .arg("envelope")
        .arg("{}")
        .query_async(&mut dconn)
        .await;
    let refused = forged.expect_err("the dashboard's user added a remediation request");
    assert!(
        refused
            .to_string()
            .to_lowercase()
            .contains("no permissions"),
        "{refused}"
    );
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Exactly the one refusal above.
    assert_eq!(log.len(), 1, "Redis refused commands: {log:#?}");

    // Everything the agents asked Docker for, through the whole run, was allowed: the proxies
    // log only what they refuse or fail.
    for service in ["docker-read", "docker-write"] {
        let out = Command::new("docker")
            .args(["logs", &stack.container(service)])
            .output()
            .expect("docker logs");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let refused: Vec<&str> = log.lines().filter(|l| l.contains(" 403 ")).collect();
        assert!(refused.is_empty(), "{service} refused an agent:\n{log}");
    }

    // 9. Down, and nothing left behind.
    let project = stack.project.clone();
    let tags = stack.tags.clone();
    drop(stack);
    let label = format!("label=com.docker.compose.project={project}");
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &label]).trim(),
        "",
        "containers left"
    );
    assert_eq!(
        docker(&["network", "ls", "-q", "--filter", &label]).trim(),
        "",
        "networks left"
    );
    assert_eq!(
        docker(&["volume", "ls", "-q", "--filter", &label]).trim(),
        "",
        "volumes left"
    );
    assert_eq!(
        docker(&["ps", "-aq", "--filter", "label=hemostat.chaos=true"]).trim(),
        "",
        "chaos containers left"
    );
    for tag in tags {
        assert_eq!(
            docker(&["images", "-q", &tag]).trim(),
            "",
            "image {tag} left"
        );
    }
    if in_ci() {
        eprintln!("end-to-end test finished in {:?}", started.elapsed());
    }
}
