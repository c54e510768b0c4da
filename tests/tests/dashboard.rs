//! The dashboard against a real redis-server seeded with real envelopes, served in-process on
//! 127.0.0.1 and spoken to over plain HTTP: every endpoint, the timeline's filters, the live
//! feed delivering a new event, the actions refused when read-only (403) or with a wrong token
//! (401) and done and audited with the right one, reads failing soft while Redis is away, and
//! the page itself in headless Chromium (rendered data, a live update without a reload, an
//! action refused on screen, keyboard and phone checks, and the screenshot in
//! `docs/img/dashboard.png`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use hemostat_alert::engine::Silence;
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::Bus;
use hemostat_common::events::{
    AUDIT_STREAM, Action, AlertKind, AnalysisMethod, ContainerAlert, ContainerRef, ContainerSample,
    ContainerState, Detection, Envelope, Escalation, EscalationKind, FalseAlarm, Heartbeat,
    HostSample, MetricsBatch, Outcome, Payload, RemediationRequest, RemediationResult, Severity,
    Verification,
};
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::shutdown::Shutdown;
use hemostat_dashboard::config::DashboardArgs;
use hemostat_tests::{TestRedis, in_ci, init_logs, random_id, repo_root, require};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const H1: &str = "docker-01";
const H2: &str = "docker-02";
const TOKEN: &str = "test-token-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The dashboard, in-process
// ---------------------------------------------------------------------------------------------

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    done: tokio::task::JoinHandle<bool>,
}

impl Running {
    async fn start(redis: &TestRedis, token: Option<&str>) -> Running {
        Running::start_with(redis, token, &[]).await
    }

    /// With more flags (`--hosts=...`, `--read-token=...`).
    async fn start_with(redis: &TestRedis, token: Option<&str>, extra: &[&str]) -> Running {
        let mut args = vec![
            "hemostat-dashboard".to_owned(),
            format!("--redis-url={}", redis.url()),
            "--listen=127.0.0.1:0".into(),
            "--agent-listen=127.0.0.1:0".into(),
            "--host-id=dash-test".into(),
            "--heartbeat-interval=1s".into(),
            "--shutdown-timeout=3s".into(),
            // Empty is unset: whatever the environment says, this test decides.
            format!("--token={}", token.unwrap_or("")),
        ];
        // Unset unless the test says, whatever the environment says.
        for flag in ["--read-token", "--hosts"] {
            if !extra.iter().any(|a| a.starts_with(flag)) {
                args.push(format!("{flag}="));
            }
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let a: DashboardArgs = hemostat_common::config::parse_from(args).expect("dashboard args");
        let cfg = a.validate().expect("dashboard config");
        let shutdown = Shutdown::new();
        let ctx = AgentContext::start(
            &a.common,
            hemostat_dashboard::AGENT,
            "dash-test".into(),
            shutdown.clone(),
        )
        .await
        .expect("agent context");
        let addr = hemostat_dashboard::start(cfg, a.common.stream_maxlen, &ctx)
            .await
            .expect("dashboard");
        let done = tokio::spawn(ctx.finish());
        Running {
            addr,
            shutdown,
            done,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        http(self.addr, "GET", path, &[], None).await
    }

    async fn stop(self) -> bool {
        self.shutdown.cancel();
        self.done.await.unwrap_or(false)
    }
}

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// A plain HTTP/1.1 request over a TCP connection (the tests crate has no HTTP client).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    // 127.0.0.1 unless the test names a host of its own.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or_default());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a full answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A connection to the live feed, read as text.
struct Feed {
    stream: tokio::net::TcpStream,
    seen: String,
}

impl Feed {
    async fn open(addr: SocketAddr) -> Feed {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
            )
            .await
            .unwrap();
        Feed {
            stream,
            seen: String::new(),
        }
    }

    /// Reads until `needle` has arrived (after what was already consumed); panics at `within`.
    async fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.seen.find(needle) {
                let upto = at + needle.len();
                let consumed: String = self.seen.drain(..upto).collect();
                return consumed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{needle:?} not on the feed; got:\n{}",
                self.seen
            );
            let mut buf = [0u8; 8192];
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) => panic!("feed closed before {needle:?}; got:\n{}", self.seen),
                Ok(Ok(n)) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(Err(e)) => panic!("feed read failed: {e}"),
                Err(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A seeded fleet
// ---------------------------------------------------------------------------------------------

async fn bus(redis: &TestRedis) -> Bus {
    Bus::connect(
        &redis.url(),
        10_000,
        AgentMetrics::default(),
        Health::default(),
        &Shutdown::new(),
    )
    .await
    .unwrap()
}

fn cref(name: &str) -> ContainerRef {
    ContainerRef {
        id: format!("{name}-0123456789"),
        name: name.into(),
        image: format!("example/{name}:1"),
        ..Default::default()
    }
}

/// An envelope `secs_ago` seconds old.
fn env(agent: &str, host: &str, secs_ago: i64, payload: Payload) -> Envelope {
    let mut e = Envelope::new(agent, host, payload);
    e.timestamp = Utc::now() - chrono::Duration::seconds(secs_ago);
    e
}

fn container_alert(
    name: &str,
    kind: AlertKind,
    severity: Severity,
    summary: &str,
) -> ContainerAlert {
    ContainerAlert {
        container: cref(name),
        kind,
        severity,
        user_initiated: matches!(kind, AlertKind::Stopped),
        reminder: false,
        detected_by: Detection::Event,
        summary: summary.into(),
        state: Some(ContainerState {
            status: if matches!(
                kind,
                AlertKind::Died | AlertKind::OomKilled | AlertKind::Stopped
            ) {
                "exited".into()
            } else {
                "running".into()
            },
            running: false,
            restart_count: 2,
            ..Default::default()
        }),
        metrics: None,
        breach: None,
        since: None,
        docker_event_time: None,
        protected: false,
        logs: None,
    }
}

fn request(
    name: &str,
    host: &str,
    alert_id: &str,
    method: AnalysisMethod,
    confidence: f64,
) -> Payload {
    Payload::RemediationNeeded(RemediationRequest {
        requested_by: None,
        container: Some(cref(name)),
        target_host: host.into(),
        action: Action::Restart,
        root_cause: format!("{name} ran out of memory"),
        reason: "rule oom_kill".into(),
        confidence,
        analysis_method: method,
        fallback_reason: None,
        alert_id: alert_id.into(),
        problem: None,
    })
}

fn result(name: &str, request_id: &str, outcome: Outcome) -> Payload {
    Payload::RemediationComplete(RemediationResult {
        container: Some(cref(name)),
        request_id: request_id.into(),
        action: Action::Restart,
        outcome,
        reason: format!(
            "restart {}",
            if outcome == Outcome::Success {
                "worked"
            } else {
                "failed"
            }
        ),
        verification: Some(Verification {
            running: outcome == Outcome::Success,
            healthy: None,
            waited_ms: 400,
            detail: "checked".into(),
        }),
        duration_ms: 612,
        dry_run: false,
        guard: None,
        problem: None,
    })
}

fn samples(round: &[(&str, f64)]) -> Payload {
    Payload::ContainerMetrics(MetricsBatch {
        samples: round
            .iter()
            .map(|(name, cpu)| ContainerSample {
                id: format!("{name}-0123456789"),
                name: (*name).into(),
                cpu_percent: Some(*cpu),
                memory_usage_bytes: (*cpu as u64 + 10) * 1024 * 1024,
                memory_limit_bytes: Some(256 * 1024 * 1024),
                memory_percent: Some(5.0),
                ..Default::default()
            })
            .collect(),
        collect_ms: 12,
    })
}

fn heartbeat(agent: &str, host: &str, secs_ago: i64, degraded: &[&str]) -> Envelope {
    env(
        agent,
        host,
        secs_ago,
        Payload::Heartbeat(Heartbeat {
            instance: format!("{agent}-{host}-1"),
            version: "0.1.0".into(),
            started_at: Utc::now() - chrono::Duration::seconds(3600),
            uptime_secs: 3600,
            interval_secs: 10,
            degraded: degraded.iter().map(|s| s.to_string()).collect(),
        }),
    )
}

/// What was seeded, for the assertions.
struct Seeded {
    oom_alert: String,
    llm_request: String,
    silence: String,
}

/// A small fleet: api (docker-01) was OOM-killed and restarted by the LLM's verdict 12 s later;
/// cache (docker-02) was stopped by a person (a false alarm); worker (docker-01) died, its
/// restart failed and its breaker is open. Envelopes go in in time order, as agents publish.
async fn seed(b: &Bus) -> Seeded {
    let mut conn = b.connection();
    // Earlier sample rounds: api and worker on docker-01.
    for (i, secs_ago) in [300, 290, 280, 270, 260].into_iter().enumerate() {
        let cpu = 5.0 + i as f64;
        b.publish(&env(
            "monitor",
            H1,
            secs_ago,
            samples(&[("api", cpu), ("worker", 50.0 + cpu)]),
        ))
        .await
        .unwrap();
    }
    let oom = env(
        "monitor",
        H1,
        240,
        Payload::ContainerUnhealthy(container_alert(
            "api",
            AlertKind::OomKilled,
            Severity::Critical,
            "container api was killed by the OOM killer",
        )),
    );
    b.publish(&oom).await.unwrap();
    let req = env(
        "analyzer",
        H1,
        239,
        request("api", H1, &oom.id, AnalysisMethod::Llm, 0.92),
    );
    b.publish(&req).await.unwrap();
    let done = env(
        "responder",
        H1,
        228,
        result("api", &req.id, Outcome::Success),
    );
    // As the responder does: the channel and the audit stream in one step.
    b.publish_once_to(
        &format!("seed:{}", done.id),
        Duration::from_secs(60),
        &[done],
        &[AUDIT_STREAM],
    )
    .await
    .unwrap();
    b.publish(&env(
        "monitor",
        H1,
        227,
        Payload::ContainerRecovered(container_alert(
            "api",
            AlertKind::OomKilled,
            Severity::Info,
            "container api is healthy again",
        )),
    ))
    .await
    .unwrap();

    let stop = env(
        "monitor",
        H2,
        200,
        Payload::ContainerUserAction(container_alert(
            "cache",
            AlertKind::Stopped,
            Severity::Info,
            "container cache was stopped by a person",
        )),
    );
    b.publish(&stop).await.unwrap();
    b.publish(&env(
        "analyzer",
        H2,
        199,
        Payload::FalseAlarm(FalseAlarm {
            container: Some(cref("cache")),
            alert_id: stop.id.clone(),
            root_cause: "a person stopped the container".into(),
            reason: "rule user_initiated".into(),
            confidence: 1.0,
            analysis_method: AnalysisMethod::Rules,
        }),
    ))
    .await
    .unwrap();

    let died = env(
        "monitor",
        H1,
        150,
        Payload::ContainerUnhealthy(container_alert(
            "worker",
            AlertKind::Died,
            Severity::Critical,
            "container worker died with exit code 1",
        )),
    );
    b.publish(&died).await.unwrap();
    let wreq = env(
        "analyzer",
        H1,
        149,
        request("worker", H1, &died.id, AnalysisMethod::Rules, 0.8),
    );
    b.publish(&wreq).await.unwrap();
    let wdone = env(
        "responder",
        H1,
        140,
        result("worker", &wreq.id, Outcome::Failed),
    );
    let esc = env(
        "responder",
        H1,
        139,
        Payload::Escalation(Escalation {
            proposal: None,
            kind: EscalationKind::CircuitBreakerOpen,
            severity: Severity::Critical,
            container: Some(cref("worker")),
            summary: "worker was restarted 5 times in 30 min; breaker open".into(),
            detail: String::new(),
        }),
    );
    b.publish_once_to(
        &format!("seed:{}", wdone.id),
        Duration::from_secs(60),
        &[wdone, esc],
        &[AUDIT_STREAM],
    )
    .await
    .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("hemostat:breaker:{H1}:worker"))
        .arg("1")
        .arg("EX")
        .arg(1800)
        .query_async(&mut conn)
        .await
        .unwrap();

    // Recent rounds: worker is gone, api is back.
    for (i, secs_ago) in [40, 30, 20, 10].into_iter().enumerate() {
        b.publish(&env(
            "monitor",
            H1,
            secs_ago,
            samples(&[("api", 2.0 + i as f64)]),
        ))
        .await
        .unwrap();
    }
    b.publish(&env(
        "monitor",
        H1,
        5,
        Payload::HostMetrics(HostSample {
            cpu_percent: Some(8.5),
            cpu_count: 2,
            memory_percent: 10.0,
            disk_percent: 60.0,
            ..Default::default()
        }),
    ))
    .await
    .unwrap();

    // Heartbeats: monitor fine, analyzer degraded, responder's key still there but its last
    // beat two minutes old (a frozen process).
    for (hb, ttl) in [
        (heartbeat("monitor", H1, 2, &[]), 30),
        (
            heartbeat("analyzer", H1, 3, &["redis: connection refused"]),
            30,
        ),
        (heartbeat("responder", H1, 120, &[]), 600),
    ] {
        b.publish(&hb).await.unwrap();
        let Payload::Heartbeat(h) = &hb.payload else {
            unreachable!()
        };
        let _: () = redis::cmd("SET")
            .arg(format!("hemostat:heartbeat:{}:{}", hb.agent, h.instance))
            .arg(hb.to_json())
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    // The alert service's decisions.
    for (decision, sink, fp) in [
        ("sent", "slack", "docker-01/api/oom_killed"),
        ("folded", "slack", "docker-01/api/oom_killed"),
        ("silenced", "slack", "docker-02/cache/stopped"),
        ("failed", "webhook", "docker-01/worker/died"),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(hemostat_alert::HISTORY_STREAM)
            .arg("*")
            .arg("decision")
            .arg(decision)
            .arg("sink")
            .arg(sink)
            .arg("fingerprint")
            .arg(fp)
            .arg("event_id")
            .arg("01SEED")
            .arg("detail")
            .arg(format!("{decision} detail"))
            .arg("at")
            .arg(Utc::now().to_rfc3339())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let silence = Silence {
        id: format!("01SEED{}", random_id().to_uppercase()),
        host: Some(H2.into()),
        container: Some("cache".into()),
        kind: None,
        expires_at: Utc::now() + chrono::Duration::hours(2),
        comment: "maintenance".into(),
        created_by: "seed".into(),
        created_at: Utc::now(),
    };
    hemostat_alert::add_silence(b, &silence).await.unwrap();

    Seeded {
        oom_alert: oom.id,
        llm_request: req.id,
        silence: silence.id,
    }
}

async fn audit_entries(redis: &TestRedis) -> Vec<HashMap<String, String>> {
    let mut conn = redis.conn().await;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(AUDIT_STREAM)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .into_iter()
                .filter_map(|(k, v)| match v {
                    redis::Value::BulkString(b) => Some((k, String::from_utf8(b).unwrap())),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

async fn breaker_open(redis: &TestRedis) -> bool {
    let mut conn = redis.conn().await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("hemostat:breaker:{H1}:worker"))
        .query_async(&mut conn)
        .await
        .unwrap();
    n == 1
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v[key] == value)
        .unwrap_or_else(|| panic!("no {key}={value} in {list:#}"))
}

// ---------------------------------------------------------------------------------------------
// API tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_endpoint_shows_the_seeded_fleet() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let seeded = seed(&bus(&redis).await).await;
    let d = Running::start(&redis, None).await;

    let page = d.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page.body.contains("<h2 id=\"timeline-h\">Timeline</h2>"));
    assert!(
        page.header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert_eq!(page.header("x-frame-options"), "DENY");
    let js = d.get("/assets/app.js").await;
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").starts_with("text/javascript"));
    assert!(js.body.contains("EventSource"));
    assert_eq!(d.get("/assets/app.css").await.status, 200);
    let missing = d.get("/nope").await;
    assert_eq!(
        (missing.status, missing.json()["error"].as_str()),
        (404, Some("no such page"))
    );

    let health = d.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["agent"], "dashboard");
    let metrics = d.get("/metrics").await;
    assert!(
        metrics.body.contains("hemostat_redis_up"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("hemostat_dashboard_live_viewers"),
        "{}",
        metrics.body
    );

    let cfg = d.get("/api/config").await.json();
    assert_eq!(cfg["read_only"], true);

    let o = d.get("/api/overview").await.json();
    assert_eq!(o["containers_monitored"], 3, "{o:#}");
    assert_eq!(o["unhealthy_now"], 1, "{o:#}");
    assert_eq!(o["unhealthy"], json!([format!("{H1}/worker")]));
    assert_eq!(o["remediations_24h"], 2);
    assert_eq!(o["success_rate_24h"], 0.5);
    assert_eq!(o["false_alarms_24h"], 1);
    assert_eq!(o["escalations_24h"], 1);
    assert_eq!(o["breakers_open"], 1);
    let mttr = o["mean_time_to_recovery_secs"].as_f64().unwrap();
    assert!(
        (mttr - 12.0).abs() < 0.5,
        "detection at -240 s, recovery at -228 s: {mttr}"
    );
    assert_eq!(o["hosts"], json!([H1, H2]));
    // monitor and analyzer (degraded counts as alive), perhaps the dashboard itself; never the
    // frozen responder.
    assert!(o["agents_alive"].as_u64().unwrap() >= 2, "{o:#}");
    assert!(o["agents_total"].as_u64().unwrap() > o["agents_alive"].as_u64().unwrap());

    let c = d.get("/api/containers").await.json();
    let rows = &c["containers"];
    assert_eq!(rows.as_array().unwrap().len(), 3, "{c:#}");
    let api = find(rows, "name", "api");
    assert_eq!(api["host"], H1);
    assert_eq!(api["state"], "running");
    assert_eq!(api["health"], "ok");
    assert_eq!(api["restart_count"], 2);
    assert_eq!(
        api["cpu"].as_array().unwrap().len(),
        9,
        "every sample round"
    );
    assert_eq!(api["cpu"][8]["v"], 5.0, "oldest first: the newest is last");
    assert_eq!(api["last_action"]["outcome"], "success");
    assert_eq!(api["breaker"]["open"], false);
    let worker = find(rows, "name", "worker");
    assert_eq!(worker["unhealthy"], true);
    assert_eq!(worker["problem"], "died");
    assert_eq!(worker["state"], "exited");
    assert_eq!(worker["breaker"]["open"], true);
    assert!(worker["breaker"]["closes_in_secs"].as_i64().unwrap() > 1700);
    assert_eq!(worker["last_action"]["outcome"], "failed");
    assert_eq!(worker["memory"].as_array().unwrap().len(), 5);
    let cache = find(rows, "name", "cache");
    assert_eq!(cache["host"], H2);
    assert_eq!(cache["health"], "stopped by a person");
    assert_eq!(cache["unhealthy"], false);

    let r = d.get("/api/remediations").await.json();
    let list = &r["remediations"];
    assert_eq!(list.as_array().unwrap().len(), 2, "{r:#}");
    assert_eq!(list[0]["container"], "worker", "newest first");
    let api_fix = find(list, "request_id", &seeded.llm_request);
    assert_eq!(api_fix["analysis_method"], "llm");
    assert_eq!(api_fix["confidence"], 0.92);
    assert_eq!(api_fix["outcome"], "success");
    assert_eq!(api_fix["dry_run"], false);
    assert_eq!(api_fix["duration_ms"], 612);
    assert_eq!(api_fix["envelope"]["event_type"], "remediation_complete");
    let audit = &r["audit"];
    let added = find(audit, "event_type", "silence_added");
    assert_eq!(added["fields"]["silence"]["id"], seeded.silence.as_str());
    find(audit, "event_type", "escalation");

    let a = d.get("/api/alerts").await.json();
    assert_eq!(
        a["decisions"],
        json!({"sent": 1, "folded": 1, "silenced": 1, "failed": 1})
    );
    assert_eq!(a["notifications"].as_array().unwrap().len(), 4);
    assert_eq!(a["notifications"][0]["decision"], "failed", "newest first");
    assert_eq!(a["silences"][0]["id"], seeded.silence.as_str());
    assert_eq!(a["silences"][0]["container"], "cache");
    assert_eq!(a["escalations"][0]["kind"], "circuit_breaker_open");

    let ag = d.get("/api/agents").await.json();
    let agents = &ag["agents"];
    assert_eq!(find(agents, "agent", "monitor")["status"], "up");
    let analyzer = find(agents, "agent", "analyzer");
    assert_eq!(analyzer["status"], "degraded");
    assert_eq!(analyzer["degraded"], json!(["redis: connection refused"]));
    assert_eq!(find(agents, "agent", "responder")["status"], "down");

    assert!(d.stop().await, "stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_is_newest_first_with_full_envelopes_and_filters() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let seeded = seed(&bus(&redis).await).await;
    let d = Running::start(&redis, None).await;
    let items = |v: &Value| v["items"].as_array().unwrap().clone();

    let all = d.get("/api/timeline").await.json();
    let list = items(&all);
    // 4 health alerts, 2 requests, 1 false alarm, 2 results, 1 escalation; no metrics or
    // heartbeats unless asked.
    assert_eq!(list.len(), 10, "{all:#}");
    assert_eq!(list[0]["event_type"], "escalation");
    let times: Vec<&str> = list
        .iter()
        .map(|i| i["timestamp"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let oom = list
        .iter()
        .find(|i| i["id"] == seeded.oom_alert.as_str())
        .unwrap();
    assert_eq!(oom["envelope"]["data"]["kind"], "oom_killed");
    assert_eq!(oom["envelope"]["schema_version"], 1);
    assert_eq!(oom["severity"], "critical");
    assert_eq!(oom["channel"], "hemostat:health_alert");

    let q = |query: &'static str| {
        let d = &d;
        async move {
            let r = d.get(&format!("/api/timeline?{query}")).await;
            assert_eq!(r.status, 200, "{query}: {}", r.body);
            items(&r.json())
        }
    };
    let h2 = q("host=docker-02").await;
    assert_eq!(h2.len(), 2);
    assert!(h2.iter().all(|i| i["container"] == "cache"));
    let worker = q("container=WORK").await;
    assert_eq!(worker.len(), 4, "died, request, failed result, escalation");
    // The alert and its recovery (which names the problem that cleared).
    assert_eq!(q("kind=oom_killed").await.len(), 2);
    assert_eq!(q("kind=remediation_complete").await.len(), 2);
    let metrics = q("kind=container_metrics").await;
    assert_eq!(metrics.len(), 9);
    let noisy = q("noise=true").await;
    // The dashboard's own heartbeats come and go; the seeded ones are all there.
    let seeded_noise = noisy
        .iter()
        .filter(|i| i["envelope"]["agent"] != "dashboard")
        .count();
    assert_eq!(seeded_noise, 10 + 9 + 1 + 3);
    let critical = q("severity=critical").await;
    assert_eq!(
        critical.len(),
        4,
        "two deaths, a failed restart, the breaker"
    );
    assert!(critical.iter().all(|i| i["severity"] == "critical"));
    assert_eq!(q("severity=warning&host=docker-01").await.len(), 6);
    assert_eq!(q("limit=3").await.len(), 3);
    assert_eq!(
        q("host=&container=&kind=").await.len(),
        10,
        "empty means any"
    );
    let bad = d.get("/api/timeline?severity=apocalyptic").await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("severity"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feed_delivers_a_newly_published_event() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let b = bus(&redis).await;
    let d = Running::start(&redis, None).await;
    let mut feed = Feed::open(d.addr).await;
    let head = feed.wait_for("event: status", WAIT).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    feed.wait_for(r#"{"redis":"up"}"#, WAIT).await;
    // The subscription is made in the background: publish until the feed has it.
    let deadline = Instant::now() + WAIT;
    let esc = loop {
        let esc = env(
            "responder",
            H1,
            0,
            Payload::Escalation(Escalation {
                proposal: None,
                kind: EscalationKind::CrashLoop,
                severity: Severity::Critical,
                container: Some(cref("api")),
                summary: format!("live-{}", random_id()),
                detail: String::new(),
            }),
        );
        b.publish(&esc).await.unwrap();
        let got =
            tokio::time::timeout(Duration::from_millis(500), feed.wait_for(&esc.id, WAIT)).await;
        if got.is_ok() {
            break esc;
        }
        assert!(Instant::now() < deadline, "no live event arrived");
    };
    let rest = feed.wait_for("\n\n", WAIT).await;
    assert!(rest.contains("crash_loop"), "{rest}");
    let _ = esc;
    assert!(d.stop().await, "open feeds do not hold up shutdown");
}

/// The status line of the live feed's answer (the feed itself never ends).
async fn feed_status(addr: SocketAddr, path: &str, host: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before a status line");
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// DNS rebinding: a page on another site points a name of its own at the dashboard's
/// address; the browser then sends that name. Every path refuses it with 403; loopback names,
/// IP addresses and the names in `HEMOSTAT_DASHBOARD_HOSTS` are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_name_is_refused() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    seed(&bus(&redis).await).await;
    let d = Running::start_with(&redis, None, &["--hosts=ops.example.org"]).await;
    let paths = [
        "/",
        "/assets/app.js",
        "/api/overview",
        "/api/containers",
        "/metrics",
        "/healthz",
    ];
    for path in paths {
        let r = http(d.addr, "GET", path, &[("Host", "evil.example")], None).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains("HEMOSTAT_DASHBOARD_HOSTS"), "{path}: {msg}");
        let r = http(d.addr, "GET", path, &[("Host", "evil.example:8080")], None).await;
        assert_eq!(r.status, 403, "{path} with a port");
        assert!(!r.body.contains("docker-01"), "nothing of the fleet leaks");
    }
    let r = http(
        d.addr,
        "POST",
        "/api/silences",
        &[("Host", "evil.example")],
        Some(r#"{"container":"api","duration":"1h"}"#),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        feed_status(d.addr, "/api/events", "evil.example")
            .await
            .contains(" 403"),
        "the live feed refuses it too"
    );
    let port = d.addr.port().to_string();
    for host in [
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        "dash.localhost".to_owned(),
        format!("[::1]:{port}"),
        "OPS.example.org".to_owned(),
        format!("ops.example.org:{port}"),
    ] {
        let r = http(d.addr, "GET", "/api/overview", &[("Host", &host)], None).await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
    assert!(
        feed_status(d.addr, "/api/events", "localhost")
            .await
            .contains(" 200")
    );
    let metrics = d.get("/metrics").await.body;
    assert!(
        metrics.contains(
            r#"hemostat_dashboard_actions_total{action="request",result="unknown_host"} 14"#
        ),
        "{metrics}"
    );
    d.stop().await;
}

/// With a read token, the JSON API, the live feed and `/metrics` need it (or the action
/// token); the page itself loads, so it can ask for one; `/healthz` stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_the_read_token_when_one_is_set() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    seed(&bus(&redis).await).await;
    let read = "reader-0123456789abcdef";
    let act = "test-token-0123456789abcdef";
    let d = Running::start_with(&redis, Some(act), &[&format!("--read-token={read}")]).await;
    for path in [
        "/api/overview",
        "/api/containers",
        "/api/config",
        "/metrics",
    ] {
        let r = d.get(path).await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(!r.body.contains("docker-01"), "{path}: nothing leaks");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap_or_default()
                .contains("read token")
        );
        let r = http(
            d.addr,
            "GET",
            path,
            &[("Authorization", "Bearer wrong-0123456789abcdef")],
            None,
        )
        .await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        for token in [read, act] {
            let bearer = format!("Bearer {token}");
            let r = http(d.addr, "GET", path, &[("Authorization", &bearer)], None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
        }
    }
    let r = http(
        d.addr,
        "GET",
        "/api/containers",
        &[("Authorization", &format!("Bearer {read}"))],
        None,
    )
    .await;
    assert!(r.body.contains("docker-01"), "{}", r.body);
    for path in ["/", "/assets/app.js", "/assets/app.css", "/healthz"] {
        assert_eq!(d.get(path).await.status, 200, "{path}");
    }
    assert!(
        feed_status(d.addr, "/api/events", "127.0.0.1")
            .await
            .contains(" 401")
    );
    assert!(
        feed_status(
            d.addr,
            &format!("/api/events?access_token={read}"),
            "127.0.0.1"
        )
        .await
        .contains(" 200")
    );
    // The read token reads; it does not act.
    let r = http(
        d.addr,
        "POST",
        "/api/silences",
        &[("Authorization", &format!("Bearer {read}"))],
        Some(r#"{"container":"api","duration":"1h"}"#),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_refused_when_no_token_is_configured() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let seeded = seed(&bus(&redis).await).await;
    let d = Running::start(&redis, None).await;
    let before = audit_entries(&redis).await.len();
    let auth = ("Authorization", "Bearer test-token-0123456789abcdef");
    let reset = http(
        d.addr,
        "POST",
        "/api/breakers/reset",
        &[auth],
        Some(r#"{"host":"docker-01","container":"worker"}"#),
    )
    .await;
    let add = http(
        d.addr,
        "POST",
        "/api/silences",
        &[auth],
        Some(r#"{"container":"api","duration":"1h"}"#),
    )
    .await;
    let expire = http(
        d.addr,
        "DELETE",
        &format!("/api/silences/{}", seeded.silence),
        &[auth],
        None,
    )
    .await;
    for r in [&reset, &add, &expire] {
        assert_eq!(r.status, 403, "{}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(
            msg.contains("read-only") && msg.contains("HEMOSTAT_DASHBOARD_TOKEN"),
            "{msg}"
        );
    }
    assert!(breaker_open(&redis).await, "nothing changed");
    let alerts = d.get("/api/alerts").await.json();
    assert_eq!(alerts["silences"].as_array().unwrap().len(), 1);
    assert_eq!(audit_entries(&redis).await.len(), before, "nothing audited");
    let metrics = d.get("/metrics").await.body;
    assert!(
        metrics.contains(
            r#"hemostat_dashboard_actions_total{action="reset_breaker",result="read_only"} 1"#
        ),
        "{metrics}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_right_token_and_are_audited() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let seeded = seed(&bus(&redis).await).await;
    let d = Running::start(&redis, Some(TOKEN)).await;
    assert_eq!(d.get("/api/config").await.json()["read_only"], false);
    let body = r#"{"host":"docker-01","container":"worker"}"#;

    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong-token-0123456789abcdef")],
        vec![("Authorization", "Basic dGVzdDp0ZXN0")],
        vec![("Authorization", "Bearer test-token-0123456789abcde")],
    ] {
        let r = http(d.addr, "POST", "/api/breakers/reset", &headers, Some(body)).await;
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert!(r.header("www-authenticate").starts_with("Bearer"));
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer")
        );
    }
    let wrong = http(
        d.addr,
        "DELETE",
        &format!("/api/silences/{}", seeded.silence),
        &[],
        None,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(
        breaker_open(&redis).await,
        "nothing changed by refused requests"
    );

    let bearer = format!("Bearer {TOKEN}");
    let ok = [
        ("Authorization", bearer.as_str()),
        ("X-Hemostat-Actor", "ana"),
    ];
    let r = http(d.addr, "POST", "/api/breakers/reset", &ok, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["was_open"], true);
    assert!(!breaker_open(&redis).await, "the breaker is closed");
    let audit = audit_entries(&redis).await;
    let reset = audit
        .iter()
        .find(|e| e["event_type"] == "breaker_reset")
        .expect("audited");
    assert_eq!(reset["host"], H1);
    assert_eq!(reset["container"], "worker");
    assert_eq!(reset["by"], "dashboard:ana");
    assert_eq!(reset["was_open"], "true");
    let c = d.get("/api/containers").await.json();
    assert_eq!(
        find(&c["containers"], "name", "worker")["breaker"]["open"],
        false
    );

    // Bad requests are refused with a reason, after the token check.
    for (bad, why) in [
        (r#"{"host":"docker-01"}"#, "container"),
        (r#"{"host":"docker 01","container":"worker"}"#, "host"),
        ("not json", ""),
    ] {
        let r = http(d.addr, "POST", "/api/breakers/reset", &ok, Some(bad)).await;
        assert!(
            matches!(r.status, 400 | 415 | 422),
            "{bad}: {} {}",
            r.status,
            r.body
        );
        assert!(
            r.json()["error"].as_str().unwrap().contains(why),
            "{}",
            r.body
        );
    }
    let none = http(
        d.addr,
        "POST",
        "/api/silences",
        &ok,
        Some(r#"{"duration":"1h"}"#),
    )
    .await;
    assert_eq!(
        none.status, 400,
        "a silence must match something: {}",
        none.body
    );
    let bad_duration = http(
        d.addr,
        "POST",
        "/api/silences",
        &ok,
        Some(r#"{"container":"api","duration":"soon"}"#),
    )
    .await;
    assert_eq!(bad_duration.status, 400);
    assert!(bad_duration.body.contains("duration"));

    let add = http(
        d.addr,
        "POST",
        "/api/silences",
        &ok,
        Some(r#"{"host":"docker-01","container":"api*","kind":"oom_killed","duration":"90m","comment":"deploying"}"#),
    )
    .await;
    assert_eq!(add.status, 201, "{}", add.body);
    let s = add.json();
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["created_by"], "dashboard:ana");
    assert_eq!(s["container"], "api*");
    let alerts = d.get("/api/alerts").await.json();
    find(&alerts["silences"], "id", &id);
    let audit = audit_entries(&redis).await;
    assert!(
        audit
            .iter()
            .any(|e| e["event_type"] == "silence_added" && e["silence"].contains(&id)),
        "silence_added audited"
    );

    let gone = http(d.addr, "DELETE", &format!("/api/silences/{id}"), &ok, None).await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    assert_eq!(gone.json()["expired"], true);
    let alerts = d.get("/api/alerts").await.json();
    assert!(
        alerts["silences"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != id.as_str())
    );
    let audit = audit_entries(&redis).await;
    let expired = audit
        .iter()
        .find(|e| e["event_type"] == "silence_expired" && e["silence_id"] == id)
        .expect("silence_expired audited");
    assert_eq!(expired["by"], "dashboard:ana");
    let again = http(d.addr, "DELETE", &format!("/api/silences/{id}"), &ok, None).await;
    assert_eq!(again.status, 404);
    let weird = http(d.addr, "DELETE", "/api/silences/..%2Fetc", &ok, None).await;
    assert_eq!(weird.status, 400);

    // The remediations view shows the dashboard's own audit entries.
    let r = d.get("/api/remediations").await.json();
    let reset = find(&r["audit"], "event_type", "breaker_reset");
    assert_eq!(reset["fields"]["by"], "dashboard:ana");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_soft_while_redis_is_away_and_recover() {
    init_logs();
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    seed(&bus(&redis).await).await;
    let d = Running::start(&redis, None).await;
    assert_eq!(d.get("/api/overview").await.status, 200);
    let mut feed = Feed::open(d.addr).await;
    feed.wait_for(r#"{"redis":"up"}"#, WAIT).await;

    redis.stop();
    let r = d.get("/api/overview").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("redis unreachable")
    );
    let t = d.get("/api/timeline").await;
    assert_eq!(t.status, 503);
    assert_eq!(
        d.get("/").await.status,
        200,
        "the page itself is still served"
    );
    feed.wait_for(r#"{"redis":"down"}"#, WAIT).await;
    let health = d.get("/healthz").await;
    assert_eq!(health.status, 503, "{}", health.body);

    redis.start_again();
    feed.wait_for(r#"{"redis":"up"}"#, WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let r = d.get("/api/overview").await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The page in headless Chromium, driven over the DevTools protocol on a pipe
// ---------------------------------------------------------------------------------------------

/// A headless Chromium driven over `--remote-debugging-pipe`: DevTools protocol messages are
/// NUL-terminated JSON on file descriptors 3 (to the browser) and 4 (from it). A shell wires
/// those descriptors to two FIFOs, so no WebSocket client or extra crate is needed.
struct Browser {
    child: std::process::Child,
    to_browser: std::fs::File,
    from_browser: tokio::sync::mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    session: String,
    errors: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium, or returns `None` (after [`require`]) when it is not installed.
    async fn start() -> Option<Browser> {
        let found = Command::new("chromium")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            require(
                "chromium",
                "not on PATH (dashboard/install-chromium.sh installs Debian's chromium package)",
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let fifo_in = dir.path().join("to-browser");
        let fifo_out = dir.path().join("from-browser");
        for f in [&fifo_in, &fifo_out] {
            let ok = Command::new("mkfifo").arg(f).status().unwrap().success();
            assert!(ok, "mkfifo {}", f.display());
        }
        let profile = dir.path().join("profile");
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-dev-shm-usage --remote-debugging-pipe --no-first-run --window-size=1280,900 --user-data-dir="$2" about:blank 3<"$0" 4>"$1""#)
            .arg(&fifo_in)
            .arg(&fifo_out)
            .arg(&profile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Opening a FIFO blocks until the other end opens it: the shell opens fd 3 first, then
        // fd 4, so open them in that order.
        let (fin, fout) = (fifo_in.clone(), fifo_out.clone());
        let (to_browser, from_file) = tokio::task::spawn_blocking(move || {
            let w = std::fs::OpenOptions::new().write(true).open(fin).unwrap();
            let r = std::fs::File::open(fout).unwrap();
            (w, r)
        })
        .await
        .unwrap();
        let (tx, from_browser) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || read_messages(from_file, tx));
        let mut b = Browser {
            child,
            to_browser,
            from_browser,
            next_id: 0,
            session: String::new(),
            errors: Vec::new(),
            _dir: dir,
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call("Runtime.enable", json!({})).await;
        b.call("Page.enable", json!({})).await;
        b.viewport(1280, 900, false).await;
        Some(b)
    }

    /// Sends one command (to the page's session once attached) and waits for its answer.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = tokio::time::timeout_at(deadline, self.from_browser.recv())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .unwrap_or_else(|| panic!("chromium went away during {method}"));
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            // Keep the page's errors: they explain a failure better than a timeout does.
            match m["method"].as_str() {
                Some("Runtime.exceptionThrown") => self
                    .errors
                    .push(m["params"]["exceptionDetails"].to_string()),
                Some("Runtime.consoleAPICalled") if m["params"]["type"] == "error" => {
                    self.errors.push(m["params"]["args"].to_string())
                }
                _ => {}
            }
        }
    }

    /// Evaluates JavaScript in the page and returns its value.
    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{js}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `js` is true in the page.
    async fn wait_until(&mut self, what: &str, js: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            // Before the document exists the expression may throw: that is "not yet".
            let guarded =
                format!("(() => {{ try {{ return !!({js}); }} catch (e) {{ return false; }} }})()");
            if self.eval(&guarded).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "timed out waiting for {what} ({js});\npage errors: {:?}\npage text:\n{}",
                    self.errors,
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    async fn press_tab(&mut self) {
        for kind in ["rawKeyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Tab", "code": "Tab", "windowsVirtualKeyCode": 9}),
            )
            .await;
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn close(mut self) {
        self.session.clear();
        // The browser may close the pipe before answering; either way it is gone after.
        let mut bytes = serde_json::to_vec(&json!({"id": 0, "method": "Browser.close"})).unwrap();
        bytes.push(0);
        let _ = self.to_browser.write_all(&bytes);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Splits what the browser writes into messages (each ends with a NUL byte).
fn read_messages(mut from: std::fs::File, tx: tokio::sync::mpsc::UnboundedSender<Value>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|b| *b == 0) {
            let msg: Vec<u8> = buf.drain(..=end).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1])
                && tx.send(v).is_err()
            {
                return;
            }
        }
    }
}

/// Standard base64 (the screenshot), without a crate for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for group in clean.chunks(4) {
        let mut n: u32 = 0;
        for (i, c) in group.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

/// The README's screenshot is refreshed only on request (`HEMOSTAT_UPDATE_SCREENSHOT=1`), so a
/// test run does not dirty the work tree; otherwise it goes under `target/`.
fn screenshot_path() -> PathBuf {
    if std::env::var("HEMOSTAT_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        return repo_root().join("docs/img/dashboard.png");
    }
    repo_root().join("target/dashboard-screenshot.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browser_shows_the_fleet_live_and_refuses_actions_when_read_only() {
    init_logs();
    assert_eq!(base64_decode("aGVtb3N0YXQ="), b"hemostat");
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let b = bus(&redis).await;
    let seeded = seed(&b).await;
    let d = Running::start(&redis, None).await;
    let Some(mut browser) = Browser::start().await else {
        assert!(!in_ci());
        return;
    };

    browser
        .call(
            "Page.navigate",
            json!({"url": format!("http://{}/", d.addr)}),
        )
        .await;
    browser
        .wait_until(
            "the page to load its data",
            "document.body.dataset.ready === 'true'",
        )
        .await;
    browser
        .wait_until(
            "the live feed",
            "document.getElementById('conn').dataset.state === 'live'",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('conn-text').textContent")
            .await,
        "live"
    );

    // The seeded containers, with sparklines, states in words, and the open breaker.
    let rows = browser
        .eval("[...document.querySelectorAll('#containers-table tbody tr')].map(r => r.dataset.host + '/' + r.dataset.container)")
        .await;
    assert_eq!(
        rows,
        json!(["docker-01/api", "docker-01/worker", "docker-02/cache"])
    );
    let worker = browser
        .eval("document.querySelector('#containers-table tr[data-container=\"worker\"]').innerText")
        .await;
    let worker = worker.as_str().unwrap();
    assert!(worker.contains("unhealthy: died"), "{worker}");
    assert!(worker.contains("open"), "{worker}");
    let spark = browser
        .eval("document.querySelectorAll('#containers-table tr[data-container=\"api\"] svg.spark polyline').length")
        .await;
    assert_eq!(spark, 2, "CPU and memory sparklines");
    let overview = browser
        .eval("document.getElementById('overview-cards').innerText")
        .await;
    let overview = overview.as_str().unwrap();
    assert!(overview.contains("Unhealthy now\n1"), "{overview}");
    assert!(overview.contains("50 %"), "{overview}");

    // The seeded events, expandable to their full envelope.
    let oom = format!("#timeline-list li[data-id=\"{}\"]", seeded.oom_alert);
    let envelope = browser
        .eval(&format!(
            "document.querySelector('{oom} pre.envelope').textContent"
        ))
        .await;
    assert!(
        envelope.as_str().unwrap().contains("\"oom_killed\""),
        "{envelope}"
    );
    assert_eq!(
        browser
            .eval(&format!("document.querySelector('{oom}').dataset.live"))
            .await,
        "api"
    );
    let agents = browser
        .eval("document.getElementById('agents-table').innerText")
        .await;
    assert!(agents.as_str().unwrap().contains("down"), "{agents}");
    let silences = browser
        .eval("document.getElementById('silence-list').innerText")
        .await;
    assert!(silences.as_str().unwrap().contains("cache"), "{silences}");

    // A new event appears without a reload: the marker set now survives, and the item is one
    // the live feed added (data-live="sse"), not one a reload fetched.
    browser.eval("window.__noReload = 42").await;
    let esc = env(
        "responder",
        H1,
        0,
        Payload::Escalation(Escalation {
            proposal: None,
            kind: EscalationKind::CrashLoop,
            severity: Severity::Critical,
            container: Some(cref("api")),
            summary: format!("browser-live-{}", random_id()),
            detail: String::new(),
        }),
    );
    b.publish(&esc).await.unwrap();
    browser
        .wait_until(
            "the published event to appear live",
            &format!(
                "!!document.querySelector('#timeline-list li[data-live=\"sse\"][data-id=\"{}\"]')",
                esc.id
            ),
        )
        .await;
    assert_eq!(
        browser.eval("window.__noReload").await,
        42,
        "no reload happened"
    );

    // Keyboard: the first Tab reaches the skip link; everything actionable is a real control.
    browser
        .eval("document.activeElement.blur(); window.scrollTo(0, 0)")
        .await;
    browser.press_tab().await;
    assert_eq!(
        browser.eval("document.activeElement.className").await,
        "skip",
        "the first Tab stop is the skip link"
    );
    let fake_buttons = browser
        .eval("document.querySelectorAll('[onclick], div[role=button], span[role=button]').length")
        .await;
    assert_eq!(fake_buttons, 0);

    // The screenshot for the README, before the action so the top of the page shows.
    browser
        .eval("document.activeElement.blur(); window.scrollTo(0, 0)")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    browser.screenshot(&screenshot_path()).await;

    // An action without a token is refused, and the page says why.
    browser
        .eval(
            "(() => { const f = document.getElementById('reset-form');
               f.elements.host.value = 'docker-01'; f.elements.container.value = 'worker';
               f.querySelector('button[type=submit]').click(); })()",
        )
        .await;
    browser
        .wait_until(
            "the refusal",
            "document.getElementById('action-result').textContent.includes('Refused')",
        )
        .await;
    let said = browser
        .eval("document.getElementById('action-result').textContent")
        .await;
    let said = said.as_str().unwrap();
    assert!(
        said.contains("read-only") && said.contains("HEMOSTAT_DASHBOARD_TOKEN"),
        "{said}"
    );
    assert!(breaker_open(&redis).await, "the breaker was not touched");
    let mode = browser
        .eval("document.getElementById('mode').textContent")
        .await;
    assert!(mode.as_str().unwrap().starts_with("Read-only"), "{mode}");

    // Redis goes away: the page says so, keeps what it shows, and goes live again after.
    redis.stop();
    browser
        .wait_until(
            "the page to say it is reconnecting",
            "document.getElementById('conn').dataset.state === 'reconnecting' && document.getElementById('conn-text').textContent.includes('reconnecting')",
        )
        .await;
    let still = browser
        .eval("document.querySelectorAll('#containers-table tbody tr[data-container]').length")
        .await;
    assert_eq!(still, 3, "what was shown stays");
    redis.start_again();
    browser
        .wait_until(
            "the page to be live again",
            "document.getElementById('conn').dataset.state === 'live'",
        )
        .await;

    // On a phone the page does not scroll sideways (wide tables scroll inside their box).
    browser.viewport(390, 844, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let width = browser.eval("document.documentElement.scrollWidth").await;
    if width.as_u64().unwrap() > 390 {
        let wide = browser
            .eval("[...document.querySelectorAll('body *')].filter(e => !(e.parentElement && e.parentElement.closest('.scroll')) && e.getBoundingClientRect().right > 391).slice(0, 8).map(e => e.tagName + '.' + e.className + '#' + e.id + ' ' + Math.round(e.getBoundingClientRect().right))")
            .await;
        panic!("page is {width} px wide on a 390 px phone; too wide: {wide}");
    }

    assert!(
        browser.errors.is_empty(),
        "page errors: {:?}",
        browser.errors
    );
    browser.close().await;
    d.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The binary: the token never reaches the logs, bad settings name the variable, and the
// container health check works
// ---------------------------------------------------------------------------------------------

fn dashboard_binary() -> Option<PathBuf> {
    // target/<profile>/deps/dashboard-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent()?.parent()?.to_path_buf();
    let bin = profile_dir.join(format!(
        "hemostat-dashboard{}",
        std::env::consts::EXE_SUFFIX
    ));
    // Always ask cargo: a no-op when it is fresh, and never a stale binary under test.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "hemostat-dashboard",
        "--bin",
        "hemostat-dashboard",
    ])
    .arg("--target-dir")
    .arg(profile_dir.parent()?)
    .current_dir(repo_root())
    .stdout(Stdio::null());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => eprintln!("building hemostat-dashboard: {other:?}"),
    }
    bin.exists().then_some(bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_never_logs_the_token_and_checks_its_settings() {
    const SECRET: &str = "SECRETDASHTOKEN-0123456789";
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    seed(&bus(&redis).await).await;
    let Some(bin) = tokio::task::spawn_blocking(dashboard_binary).await.unwrap() else {
        require(
            "the hemostat-dashboard binary",
            "not built and cargo could not build it",
        );
        return;
    };
    let cwd = tempfile::tempdir().unwrap();

    // A token too short to be safe is refused at start-up, naming the variable, not the value.
    let bad = Command::new(&bin)
        .current_dir(cwd.path())
        .env("REDIS_URL", redis.url())
        .env("HEMOSTAT_DASHBOARD_TOKEN", "abc123xyz")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("HEMOSTAT_DASHBOARD_TOKEN"), "{err}");
    assert!(!err.contains("abc123xyz"), "{err}");
    let bad = Command::new(&bin)
        .current_dir(cwd.path())
        .env("HEMOSTAT_DASHBOARD_LISTEN", "everywhere")
        .output()
        .unwrap();
    assert_ne!(bad.status.code(), Some(0));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("HEMOSTAT_DASHBOARD_LISTEN"), "{err}");

    let port = free_port();
    let agent_port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(&bin)
        .current_dir(cwd.path())
        .env("REDIS_URL", redis.url())
        .env("HEMOSTAT_DASHBOARD_LISTEN", &listen)
        .env("HEMOSTAT_LISTEN", format!("127.0.0.1:{agent_port}"))
        .env("HEMOSTAT_DASHBOARD_TOKEN", SECRET)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the dashboard did not listen on {listen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = Some(r#"{"host":"docker-01","container":"worker"}"#);
    let wrong = format!("Bearer {SECRET}-nope");
    let r = http(
        addr,
        "POST",
        "/api/breakers/reset",
        &[("Authorization", &wrong)],
        body,
    )
    .await;
    assert_eq!(r.status, 401);
    let right = format!("Bearer {SECRET}");
    let r = http(
        addr,
        "POST",
        "/api/breakers/reset",
        &[("Authorization", &right)],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(SECRET));

    // The container health check asks the agent listener's /healthz, as every agent's does.
    let check = Command::new(&bin)
        .arg("healthcheck")
        .env("HEMOSTAT_LISTEN", format!("0.0.0.0:{agent_port}"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let check = Command::new(&bin)
        .arg("healthcheck")
        .env("HEMOSTAT_LISTEN", format!("0.0.0.0:{}", free_port()))
        .output()
        .unwrap();
    assert!(!check.status.success(), "nothing listens there");

    let pid = child.id().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the dashboard did not stop on SIGTERM")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "stopped by SIGTERM, cleanly"
    );
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("enabled (token set)"), "{logs}");
    assert!(logs.contains("breaker reset from the dashboard"), "{logs}");
    assert!(
        !logs.contains("SECRETDASHTOKEN"),
        "the token reached the logs:\n{logs}"
    );
}

/// Asking a host through the dashboard: behind the read token, the host's reply passed through
/// as it is (here from a stand-in monitor that answers one request), a silent host a 504 that
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_a_host_needs_the_read_token_and_a_silent_host_is_a_timeout() {
    use hemostat_common::ask;
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let read = "reader-0123456789abcdef";
    let d = Running::start_with(&redis, Some(TOKEN), &[&format!("--read-token={read}")]).await;
    let path = format!("/api/hosts/{H1}/containers/web/logs?tail=5&since=10m");
    assert_eq!(d.get(&path).await.status, 401);

    // A stand-in for H1's monitor: one request, answered with two lines.
    let client = redis.client();
    let answerer = tokio::spawn(async move {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let read: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(10_000)
            .arg("STREAMS")
            .arg(ask::ask_stream(H1))
            .arg("0")
            .query_async(&mut conn)
            .await
            .unwrap();
        let entry = &read.keys[0].ids[0];
        let json: String = entry.get(ask::REQUEST_FIELD).unwrap();
        let request: ask::AskRequest = serde_json::from_str(&json).unwrap();
        let reply = ask::AskReply {
            request_id: request.id.clone(),
            host: H1.into(),
            answered_at: Utc::now(),
            result: ask::Answer::Logs {
                lines: vec!["one".into(), "<b>two</b>".into()],
                dropped: 0,
                truncated: false,
            },
        };
        let _: () = redis::cmd("RPUSH")
            .arg(ask::reply_key(&request.id))
            .arg(serde_json::to_string(&reply).unwrap())
            .query_async(&mut conn)
            .await
            .unwrap();
        request
    });
    let bearer = format!("Bearer {read}");
    let r = http(d.addr, "GET", &path, &[("Authorization", &bearer)], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"]["lines"][1], "<b>two</b>");
    let request = answerer.await.unwrap();
    assert!(
        matches!(
            &request.query,
            ask::Query::Logs { container, tail: Some(5), since: Some(_) } if container == "web"
        ),
        "{:?}",
        request.query
    );
    assert_eq!(request.asked_by, "dashboard");

    let started = Instant::now();
    let r = http(
        d.addr,
        "GET",
        "/api/hosts/nobody/containers",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(
        r.json()["error"],
        "host nobody did not answer within 5 s (is its monitor running?)"
    );
    assert!(started.elapsed() < Duration::from_secs(7));
    assert!(d.stop().await);
}

// ---------------------------------------------------------------------------------------------
// Proposals (approve mode), "restart now" and maintenance windows
// ---------------------------------------------------------------------------------------------

/// A proposal as a responder leaves it: its record, and its approval escalation on the bus.
async fn propose(b: &Bus, redis: &TestRedis, id: &str, container: &str, expires_in_ms: i64) {
    use hemostat_common::events::{Proposal, proposals};
    let expires = Utc::now() + chrono::Duration::milliseconds(expires_in_ms);
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(proposals::proposal(H1, id))
        .arg("action")
        .arg("restart")
        .arg("container")
        .arg(container)
        .arg("root_cause")
        .arg("the process <b>crashed</b>")
        .arg("reason")
        .arg("rule crash")
        .arg("proposed_ms")
        .arg(Utc::now().timestamp_millis())
        .arg("expires_ms")
        .arg(expires.timestamp_millis())
        .query_async(&mut conn)
        .await
        .unwrap();
    b.publish(&env(
        "responder",
        H1,
        0,
        Payload::Escalation(Escalation {
            kind: EscalationKind::ApprovalNeeded,
            severity: Severity::Warning,
            container: Some(cref(container)),
            summary: format!("approve restart of {container}?"),
            detail: String::new(),
            proposal: Some(Proposal {
                id: id.into(),
                action: Action::Restart,
                expires_at: expires,
            }),
        }),
    ))
    .await
    .unwrap();
}

async fn decision(redis: &TestRedis, id: &str) -> Option<String> {
    let mut conn = redis.conn().await;
    redis::cmd("GET")
        .arg(hemostat_common::events::proposals::decision(H1, id))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_is_decided_once_by_token_or_by_its_signed_link_and_a_visit_decides_nothing() {
    use hemostat_common::events::proposals;
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let b = bus(&redis).await;
    let key = b"signing-key-of-this-test";
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(proposals::SIGNING_KEY)
        .arg(&key[..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let (one, two, late) = ("01JPROPOSALONE", "01JPROPOSALTWO", "01JPROPOSALLATE");
    propose(&b, &redis, one, "web", 60_000).await;
    propose(&b, &redis, two, "api", 60_000).await;
    propose(&b, &redis, late, "old", -1_000).await;
    let d = Running::start(&redis, Some(TOKEN)).await;

    let list = d.get("/api/proposals").await.json();
    assert_eq!(list["pending"], 2, "{list:#}");
    assert_eq!(find(&list["proposals"], "id", late)["state"], "expired");

    // The link: a wrong signature shows nothing; the right one shows the proposal, escaped,
    // and decides nothing by being opened.
    let r = d.get(&format!("/approve/{H1}/{one}?sig=00ff")).await;
    assert_eq!(r.status, 403);
    let sig = proposals::sign(key, H1, one);
    let page = d.get(&format!("/approve/{H1}/{one}?sig={sig}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("&lt;b&gt;crashed&lt;/b&gt;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("value=approve"), "{}", page.body);
    assert!(
        page.header("content-security-policy")
            .contains("form-action 'self'")
    );
    assert_eq!(decision(&redis, one).await, None, "a visit decides nothing");
    // A signature for one proposal does not open another.
    let r = http(
        d.addr,
        "POST",
        &format!("/approve/{H1}/{two}"),
        &[],
        Some(&format!("sig={sig}&decision=approve")),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(decision(&redis, two).await, None);
    // Deciding with the link.
    let r = http(
        d.addr,
        "POST",
        &format!("/approve/{H1}/{one}"),
        &[],
        Some(&format!("sig={sig}&decision=approve&name=Ana+L")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Approved"));
    assert_eq!(
        decision(&redis, one).await.as_deref(),
        Some("approved:chat-link:Ana L")
    );
    // The first decision wins.
    let bearer = format!("Bearer {TOKEN}");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("X-Hemostat-Actor", "bob"),
    ];
    let r = http(
        d.addr,
        "POST",
        &format!("/api/proposals/{H1}/{one}/decline"),
        &auth,
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("decided already")
    );
    // With the token; without it, refused.
    let r = http(
        d.addr,
        "POST",
        &format!("/api/proposals/{H1}/{two}/decline"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(
        d.addr,
        "POST",
        &format!("/api/proposals/{H1}/{two}/decline"),
        &auth,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        decision(&redis, two).await.as_deref(),
        Some("declined:dashboard:bob")
    );
    // Too late.
    let r = http(
        d.addr,
        "POST",
        &format!("/api/proposals/{H1}/{late}/approve"),
        &auth,
        None,
    )
    .await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("expired"));
    assert_eq!(decision(&redis, late).await, None);
    // Every decision is audited with who made it.
    let audit = audit_entries(&redis).await;
    let decided: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|e| e["event_type"].starts_with("proposal_"))
        .map(|e| {
            (
                e["event_type"].as_str(),
                e["request_id"].as_str(),
                e["by"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        [
            ("proposal_approved", one, "chat-link:Ana L"),
            ("proposal_declined", two, "dashboard:bob")
        ]
    );
    let list = d.get("/api/proposals").await.json();
    assert_eq!(list["pending"], 0, "{list:#}");
    assert!(d.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_now_goes_to_the_responder_and_windows_open_list_and_end() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let d = Running::start(&redis, Some(TOKEN)).await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("X-Hemostat-Actor", "ana"),
    ];
    let body = format!(r#"{{"host":"{H1}","container":"web"}}"#);
    let r = http(d.addr, "POST", "/api/restart", &[], Some(&body)).await;
    assert_eq!(r.status, 401);
    let r = http(d.addr, "POST", "/api/restart", &auth, Some(&body)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["request_id"].as_str().unwrap().to_owned();
    let b = bus(&redis).await;
    let sent = b
        .recent(hemostat_common::events::Channel::PersonRequest, 10)
        .await
        .unwrap();
    assert_eq!(sent.len(), 1);
    let Payload::PersonRequest(req) = &sent[0].payload else {
        panic!("{:?}", sent[0])
    };
    assert_eq!(sent[0].id, id);
    assert_eq!(req.requested_by.as_deref(), Some("dashboard:ana"));
    assert_eq!(
        (req.target_host.as_str(), req.action),
        (H1, Action::Restart)
    );
    assert_eq!(req.container.as_ref().unwrap().name, "web");
    let audit = audit_entries(&redis).await;
    assert!(audit.iter().any(|e| e["event_type"] == "restart_requested"
        && e["request_id"] == id
        && e["by"] == "dashboard:ana"));

    // Windows: a bad one says why; a good one is listed as holding, then ended.
    let r = http(
        d.addr,
        "POST",
        "/api/maintenance",
        &auth,
        Some(r#"{"for":"soon"}"#),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("for:"),
        "{}",
        r.body
    );
    let r = http(
        d.addr,
        "POST",
        "/api/maintenance",
        &[],
        Some(r#"{"for":"30m"}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(
        d.addr,
        "POST",
        "/api/maintenance",
        &auth,
        Some(r#"{"for":"30m","container":"db*","pauses":"remediation","comment":"backup"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let wid = r.json()["id"].as_str().unwrap().to_owned();
    let list = d.get("/api/maintenance").await.json();
    let w = &list["windows"][0];
    assert_eq!(w["window"]["id"], wid.as_str());
    assert_eq!(w["active"], true);
    assert_eq!(w["window"]["pauses"], "remediation");
    assert_eq!(w["window"]["created_by"], "dashboard:ana");
    let weekly = http(
        d.addr,
        "POST",
        "/api/maintenance",
        &auth,
        Some(r#"{"days":"sat,sun","from":"01:00","to":"05:00","tz":"Europe/Berlin"}"#),
    )
    .await;
    assert_eq!(weekly.status, 201, "{}", weekly.body);
    assert_eq!(weekly.json()["pauses"], "both");
    let r = http(
        d.addr,
        "DELETE",
        &format!("/api/maintenance/{wid}"),
        &auth,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        d.addr,
        "DELETE",
        &format!("/api/maintenance/{wid}"),
        &auth,
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let list = d.get("/api/maintenance").await.json();
    assert_eq!(list["windows"].as_array().unwrap().len(), 1, "{list:#}");
    let audit = audit_entries(&redis).await;
    for t in ["maintenance_added", "maintenance_ended"] {
        assert!(
            audit.iter().any(|e| e["event_type"] == t),
            "{t}: {audit:#?}"
        );
    }
    assert!(d.stop().await);
}
