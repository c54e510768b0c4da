//! The alert service against a real redis-server and real HTTP sinks (scripted axum servers on
//! 127.0.0.1): crashes and remediations reach Slack as Block Kit, bursts are grouped without
//! hiding anyone, duplicates fold, recoveries resolve, 429s are honoured, a failing or hanging
//! sink is dead-lettered without holding up the others, silences mute exactly what they match
//! until they expire, sink secrets never reach Redis, and the `test` command says what happened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use hemostat_alert::AlertService;
use hemostat_alert::config::AlertArgs;
use hemostat_alert::engine::Silence;
use hemostat_common::agent::AgentContext;
use hemostat_common::bus::Bus;
use hemostat_common::events::{
    AUDIT_STREAM, Action, AlertKind, AnalysisMethod, Channel, ContainerAlert, ContainerRef,
    DEAD_LETTER_STREAM, Detection, Envelope, Outcome, Payload, RemediationRequest,
    RemediationResult, Severity,
};
use hemostat_common::http::Health;
use hemostat_common::metrics::AgentMetrics;
use hemostat_common::shutdown::Shutdown;
use hemostat_tests::chat::{BOT_TOKEN, ChatServices, SECRET as CHAT_SECRET};
use hemostat_tests::smtp::SmtpServer;
use hemostat_tests::{TestRedis, init_logs, random_id, require, wait_for_group};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);
const HOST: &str = "test-host";

// ---------------------------------------------------------------------------------------------
// A recording HTTP sink whose answers are scripted per test.
// ---------------------------------------------------------------------------------------------

/// One scripted answer.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    /// How long to wait before answering (a "hang" is a delay longer than any timeout).
    delay: Duration,
}

impl Reply {
    fn ok() -> Reply {
        Reply::status(200)
    }

    fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }

    fn too_many(retry_after: &'static str) -> Reply {
        Reply {
            retry_after: Some(retry_after),
            ..Reply::status(429)
        }
    }

    fn hang() -> Reply {
        Reply {
            delay: Duration::from_secs(30),
            ..Reply::ok()
        }
    }
}

/// One request the sink received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("sink body is not JSON ({e}): {}", self.body))
    }
}

#[derive(Debug)]
struct SinkState {
    script: Mutex<VecDeque<Reply>>,
    /// The answer once the script ran out.
    then: Reply,
    received: Mutex<Vec<Received>>,
}

/// A scripted, recording HTTP server on 127.0.0.1 (any path, any method).
struct SinkServer {
    addr: SocketAddr,
    state: Arc<SinkState>,
    task: tokio::task::JoinHandle<()>,
}

async fn answer(
    State(state): State<Arc<SinkState>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    state.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| state.then.clone());
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = (StatusCode::from_u16(reply.status).unwrap(), "ok").into_response();
    if let Some(after) = reply.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
    }
    resp
}

impl SinkServer {
    /// Answers with `script` in order, then with `then` for ever.
    async fn start(script: Vec<Reply>, then: Reply) -> SinkServer {
        let state = Arc::new(SinkState {
            script: Mutex::new(script.into()),
            then,
            received: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(answer).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SinkServer { addr, state, task }
    }

    /// Always answers `reply`.
    async fn always(reply: Reply) -> SinkServer {
        SinkServer::start(Vec::new(), reply).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    async fn wait_for(&self, n: usize, what: &str) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} request(s) so far: {:#?}",
                got.len(),
                got.iter().map(|r| &r.body).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a rendered message names container `name` (as its Container field or in a title).
fn names(body: &str, name: &str) -> bool {
    body.contains(&format!("`{name}`")) || body.contains(&format!("ontainer {name} "))
}

// ---------------------------------------------------------------------------------------------
// The alert service, in process.
// ---------------------------------------------------------------------------------------------

struct RunningAlert {
    shutdown: Shutdown,
    http: SocketAddr,
    svc: Arc<AlertService>,
    done: tokio::task::JoinHandle<bool>,
}

impl RunningAlert {
    /// Starts the service with fast test settings, `settings` (flag name without `--`, value)
    /// overriding them, and returns once its consumer groups exist (a new group starts at the
    /// end of the stream: anything published before would never be seen).
    async fn start(redis_url: &str, settings: &[(&str, &str)]) -> RunningAlert {
        let mut flags: Vec<(String, String)> = [
            ("redis-url", redis_url),
            ("listen", "127.0.0.1:0"),
            ("host-id", HOST),
            ("heartbeat-interval", "1s"),
            ("shutdown-timeout", "3s"),
            ("group-wait", "500ms"),
            ("sink-timeout", "1s"),
            ("sink-attempts", "3"),
            ("sink-backoff", "100ms"),
            ("sink-backoff-max", "500ms"),
            ("notify-crashes", "true"),
            ("notify-false-alarms", "false"),
            // Empty is unset: whatever the environment says, only this test's sinks exist.
            ("slack-webhook-url", ""),
            ("webhook-url", ""),
            ("pagerduty-routing-key", ""),
            ("notify-urls", ""),
            ("notify-routes", ""),
            ("dashboard-url", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in settings {
            match flags.iter_mut().find(|(fk, _)| fk == k) {
                Some(slot) => slot.1 = v.to_string(),
                None => flags.push((k.to_string(), v.to_string())),
            }
        }
        let args = std::iter::once("hemostat-alert".to_owned())
            .chain(flags.iter().map(|(k, v)| format!("--{k}={v}")));
        let a: AlertArgs = hemostat_common::config::parse_from(args).expect("alert args");
        let cfg = a.validate().expect("alert config");
        let cfg_crashes = cfg.sources.crashes;
        let shutdown = Shutdown::new();
        let ctx = AgentContext::start(
            &a.common,
            hemostat_alert::AGENT,
            HOST.into(),
            shutdown.clone(),
        )
        .await
        .expect("agent context");
        let svc = Arc::new(AlertService::new(cfg, ctx.bus.clone()));
        let sinks = svc.sinks().expect("sinks");
        hemostat_alert::spawn(svc.clone(), sinks, &ctx);
        let http = ctx.http_addr;
        let done = tokio::spawn(ctx.finish());
        let client = redis::Client::open(redis_url).unwrap();
        let mut channels = vec![Channel::RemediationComplete, Channel::Alerts];
        if cfg_crashes {
            channels.push(Channel::HealthAlert);
        }
        for channel in channels {
            wait_for_group(&client, channel.stream(), hemostat_alert::AGENT).await;
        }
        RunningAlert {
            shutdown,
            http,
            svc,
            done,
        }
    }

    /// [`RunningAlert::start`] with owned arguments, for an agent on a runtime of its own.
    async fn start_owned(redis_url: String, settings: Vec<(String, String)>) -> RunningAlert {
        let s: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        RunningAlert::start(&redis_url, &s).await
    }

    /// `GET /healthz`: the status code and body.
    async fn healthz(&self) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    /// `GET /metrics`, over a raw TCP connection.
    async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.http).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Stops it; true when it stopped cleanly within its timeout.
    async fn stop(self) -> bool {
        self.shutdown.cancel();
        self.done.await.unwrap_or(false)
    }
}

// ---------------------------------------------------------------------------------------------
// The world: a private Redis and a publisher.
// ---------------------------------------------------------------------------------------------

struct World {
    redis: TestRedis,
    bus: Bus,
}

/// One stream entry, its fields as strings.
#[derive(Debug, Clone)]
struct Entry {
    fields: BTreeMap<String, String>,
}

impl Entry {
    fn get(&self, k: &str) -> &str {
        self.fields.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Starts Redis and a publisher, or returns early (skip outside CI).
macro_rules! setup {
    () => {{
        init_logs();
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let bus = Bus::connect(
            &redis.url(),
            10_000,
            AgentMetrics::default(),
            Health::default(),
            &Shutdown::new(),
        )
        .await
        .expect("publisher bus");
        World { redis, bus }
    }};
}

impl World {
    async fn publish(&self, env: &Envelope) {
        self.bus.publish(env).await.expect("publish");
    }

    async fn xrange(&self, stream: &str) -> Vec<Entry> {
        let mut conn = self.redis.conn().await;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        reply
            .ids
            .into_iter()
            .map(|e| Entry {
                fields: e
                    .map
                    .into_iter()
                    .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default()))
                    .collect(),
            })
            .collect()
    }

    async fn history(&self) -> Vec<Entry> {
        self.xrange(hemostat_alert::HISTORY_STREAM).await
    }

    /// Waits until `pred` holds for the whole of `stream`; returns the stream.
    async fn wait_stream(
        &self,
        stream: &str,
        what: &str,
        pred: impl Fn(&[Entry]) -> bool,
    ) -> Vec<Entry> {
        let deadline = Instant::now() + WAIT;
        loop {
            let entries = self.xrange(stream).await;
            if pred(&entries) {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} in {stream}: {entries:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for a decision about `event_id` at `sink` in the history; returns it.
    async fn wait_decision(&self, decision: &str, sink: &str, event_id: &str) -> Entry {
        let history = self
            .wait_stream(
                hemostat_alert::HISTORY_STREAM,
                &format!("{decision} by {sink} for {event_id}"),
                |h| {
                    h.iter().any(|e| {
                        e.get("decision") == decision
                            && e.get("sink") == sink
                            && e.get("event_id") == event_id
                    })
                },
            )
            .await;
        history
            .into_iter()
            .find(|e| {
                e.get("decision") == decision
                    && e.get("sink") == sink
                    && e.get("event_id") == event_id
            })
            .unwrap()
    }
}

fn container(name: &str) -> ContainerRef {
    ContainerRef {
        id: format!("{name}-{}", random_id()),
        name: name.into(),
        image: "registry.example/shop:1.4".into(),
        ..ContainerRef::default()
    }
}

fn alert(name: &str, kind: AlertKind, summary: String) -> ContainerAlert {
    ContainerAlert {
        container: container(name),
        kind,
        severity: Severity::Critical,
        user_initiated: false,
        reminder: false,
        detected_by: Detection::Event,
        summary,
        state: None,
        metrics: None,
        breach: None,
        since: None,
        docker_event_time: None,
        protected: false,
        logs: None,
    }
}

/// `container_unhealthy`, kind died, for `name` (a fresh envelope id every call).
fn died(name: &str) -> Envelope {
    let a = alert(
        name,
        AlertKind::Died,
        format!("container {name} died (exit code 1)"),
    );
    Envelope::new("monitor", HOST, Payload::ContainerUnhealthy(a))
}

/// `container_recovered`, kind died, for `name`.
fn recovered(name: &str) -> Envelope {
    let a = alert(
        name,
        AlertKind::Died,
        format!("container {name} is running again"),
    );
    Envelope::new("monitor", HOST, Payload::ContainerRecovered(a))
}

fn fingerprint(name: &str, kind: &str) -> String {
    format!("{HOST}/{name}/{kind}")
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_remediation_reach_slack_with_block_kit() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[("slack-webhook-url", &slack.url("/slack"))],
    )
    .await;

    let crash = died("web");
    w.publish(&crash).await;
    let first = slack.wait_for(1, "the crash message").await;
    let r = &first[0];
    assert_eq!(r.path, "/slack");
    assert!(
        r.headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let v = r.json();
    hemostat_alert::render::check_block_kit(&v).unwrap_or_else(|e| panic!("{e}: {v:#}"));
    let text = v["text"].as_str().expect("fallback text");
    assert!(
        !v["attachments"][0]["blocks"].as_array().unwrap().is_empty(),
        "{v:#}"
    );
    assert!(
        text.contains("web") && text.contains(HOST),
        "crash text: {text}"
    );
    assert!(names(&r.body, "web"), "{}", r.body);

    // The verdict the responder acted on, so the message can say why.
    let verdict = Envelope::new(
        "analyzer",
        HOST,
        Payload::RemediationNeeded(RemediationRequest {
            requested_by: None,
            container: Some(container("web")),
            target_host: HOST.into(),
            action: Action::Restart,
            root_cause: "the process exited with code 1 after a bad config reload".into(),
            reason: "a restart clears it".into(),
            confidence: 0.9,
            analysis_method: AnalysisMethod::Rules,
            fallback_reason: None,
            alert_id: crash.id.clone(),
            problem: None,
        }),
    );
    w.publish(&verdict).await;
    let done = Envelope::new(
        "responder",
        HOST,
        Payload::RemediationComplete(RemediationResult {
            container: Some(container("web")),
            request_id: verdict.id.clone(),
            action: Action::Restart,
            outcome: Outcome::Success,
            reason: "restarted; running and healthy after 2s".into(),
            verification: None,
            duration_ms: 2100,
            dry_run: false,
            guard: None,
            problem: None,
        }),
    );
    w.publish(&done).await;
    let both = slack.wait_for(2, "the remediation message").await;
    let v = both[1].json();
    hemostat_alert::render::check_block_kit(&v).unwrap_or_else(|e| panic!("{e}: {v:#}"));
    let text = v["text"].as_str().expect("fallback text");
    assert!(text.contains("Restart of web succeeded"), "{text}");
    assert!(text.contains(HOST), "{text}");
    assert!(
        both[1].body.contains("bad config reload"),
        "the verdict's root cause is in the message: {}",
        both[1].body
    );

    w.wait_decision("sent", "slack", &crash.id).await;
    let sent = w.wait_decision("sent", "slack", &done.id).await;
    assert_eq!(
        sent.get("fingerprint"),
        fingerprint("web", "remediation_restart_success")
    );
    assert_eq!(slack.received().len(), 2, "one message each, nothing more");
    assert!(alert.stop().await, "stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_same_second_never_hide_each_other() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let discord = SinkServer::always(Reply::status(204)).await;
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("webhook-url", &discord.url("/api/webhooks/1/x")),
            ("webhook-preset", "discord"),
        ],
    )
    .await;

    let (web, db) = (died("web"), died("db"));
    w.publish(&web).await;
    w.publish(&db).await;

    let deadline = Instant::now() + WAIT;
    loop {
        let all: String = slack.received().iter().map(|r| r.body.clone()).collect();
        if names(&all, "web") && names(&all, "db") {
            break;
        }
        assert!(Instant::now() < deadline, "both never named; got: {all}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = slack.received();
    assert!(got.len() <= 2, "{} messages for two crashes", got.len());
    if got.len() == 1 {
        // Grouped: one message, both listed.
        let v = got[0].json();
        hemostat_alert::render::check_block_kit(&v).unwrap_or_else(|e| panic!("{e}: {v:#}"));
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains("Container web died") && text.contains("Container db died"),
            "{text}"
        );
    }
    w.wait_decision("sent", "slack", &web.id).await;
    w.wait_decision("sent", "slack", &db.id).await;
    w.wait_decision("sent", "webhook-discord", &web.id).await;
    w.wait_decision("sent", "webhook-discord", &db.id).await;
    let contents: Vec<String> = discord
        .received()
        .iter()
        .map(|r| {
            let v = r.json();
            assert!(v["embeds"][0]["title"].is_string(), "{v:#}");
            v["content"].as_str().expect("discord content").to_owned()
        })
        .collect();
    let all = contents.join("\n");
    assert!(
        all.contains("Container web died") && all.contains("Container db died"),
        "{all}"
    );
    assert!(
        contents.len() <= 2 && contents.len() == got.len(),
        "{contents:#?}"
    );
    let history = w.history().await;
    let ours = [fingerprint("web", "died"), fingerprint("db", "died")];
    let folded: Vec<_> = history
        .iter()
        .filter(|e| {
            e.get("decision") == "folded" && ours.contains(&e.get("fingerprint").to_owned())
        })
        .collect();
    assert!(folded.is_empty(), "a container hid another: {folded:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_health_output_reaches_slack_and_discord_inert() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let discord = SinkServer::always(Reply::status(204)).await;
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("webhook-url", &discord.url("/api/webhooks/1/x")),
            ("webhook-preset", "discord"),
        ],
    )
    .await;

    let output =
        "<!channel> see <http://evil.example|docs> *bold* @everyone [x](http://evil.example)";
    let a = alert(
        "web",
        AlertKind::Unhealthy,
        format!("container web is failing its health check: {output}"),
    );
    let sick = Envelope::new("monitor", HOST, Payload::ContainerUnhealthy(a));
    w.publish(&sick).await;
    let s = slack.wait_for(1, "the unhealthy message").await[0].json();
    hemostat_alert::render::check_block_kit(&s).unwrap_or_else(|e| panic!("{e}: {s:#}"));
    let d = discord.wait_for(1, "the unhealthy message").await[0].json();
    assert_eq!(
        d["allowed_mentions"]["parse"],
        serde_json::json!([]),
        "{d:#}"
    );
    // Slack's entities leave no `<` at all; Discord's each have a backslash.
    assert!(!s.to_string().contains('<'), "{s:#}");
    let content = d["content"].as_str().unwrap();
    assert!(!content.replace("\\<", "").contains('<'), "{content}");
    for (sink, v) in [("slack", &s), ("discord", &d)] {
        let body = v.to_string();
        for live in ["http://", "@everyone", "](http"] {
            assert!(!body.contains(live), "{sink} got {live:?} live: {body}");
        }
        // Still said, and still naming the container.
        assert!(
            body.contains("channel") && body.contains("evil.example"),
            "{sink}: {body}"
        );
        assert!(names(&body, "web"), "{sink}: {body}");
    }
    assert!(
        s["text"].as_str().unwrap().contains("&lt;!channel&gt;"),
        "{s:#}"
    );
    w.wait_decision("sent", "slack", &sick.id).await;
    w.wait_decision("sent", "webhook-discord", &sick.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_fold_and_recovery_resolves() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[("slack-webhook-url", &slack.url("/slack"))],
    )
    .await;

    let dupes = [died("web"), died("web"), died("web")];
    assert!(dupes[0].id != dupes[1].id && dupes[1].id != dupes[2].id);
    for d in &dupes {
        w.publish(d).await;
    }
    slack.wait_for(1, "the crash message").await;
    let fp = fingerprint("web", "died");
    let history = w
        .wait_stream(hemostat_alert::HISTORY_STREAM, "two folded", |h| {
            h.iter()
                .filter(|e| e.get("decision") == "folded" && e.get("fingerprint") == fp)
                .count()
                >= 2
        })
        .await;
    let sent: Vec<_> = history
        .iter()
        .filter(|e| e.get("decision") == "sent" && e.get("fingerprint") == fp)
        .collect();
    assert!(sent.len() <= 1, "{sent:#?}");
    // Longer than a group wait: the duplicates never become messages of their own.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(slack.received().len(), 1, "three duplicates, one message");
    let history = w.history().await;
    let folded = history
        .iter()
        .filter(|e| e.get("decision") == "folded" && e.get("fingerprint") == fp)
        .count();
    assert_eq!(folded, 2, "{history:#?}");
    let sent = history
        .iter()
        .filter(|e| e.get("decision") == "sent" && e.get("fingerprint") == fp)
        .count();
    assert_eq!(sent, 1, "{history:#?}");

    let back = recovered("web");
    w.publish(&back).await;
    let got = slack.wait_for(2, "the resolved message").await;
    let v = got[1].json();
    hemostat_alert::render::check_block_kit(&v).unwrap_or_else(|e| panic!("{e}: {v:#}"));
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("RESOLVED") || text.contains("running again"),
        "{text}"
    );
    assert!(names(&got[1].body, "web"), "{}", got[1].body);
    let resolved = w.wait_decision("sent", "slack", &back.id).await;
    assert_eq!(resolved.get("fingerprint"), fp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_429_then_200_delivered_once() {
    let w = setup!();
    let slack = SinkServer::start(vec![Reply::too_many("1")], Reply::ok()).await;
    // Retry-After is honoured up to the longest backoff: 2 s here.
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("sink-backoff-max", "2s"),
        ],
    )
    .await;

    let crash = died("web");
    w.publish(&crash).await;
    let got = slack.wait_for(2, "the retry after the 429").await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured (retried after {gap:?}; the backoff is 100ms)"
    );
    assert!(gap < Duration::from_secs(4), "retried only after {gap:?}");
    assert_eq!(got[0].body, got[1].body, "the same message is retried");
    let sent = w.wait_decision("sent", "slack", &crash.id).await;
    assert!(
        sent.get("detail").contains("after 2 attempt(s)"),
        "{sent:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slack.received().len(), 2, "delivered once");
    assert!(
        w.xrange(DEAD_LETTER_STREAM).await.is_empty(),
        "nothing dead-lettered"
    );
    assert!(
        !w.history()
            .await
            .iter()
            .any(|e| e.get("decision") == "failed"),
        "no failure recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sink_is_dead_lettered_and_others_unaffected() {
    let w = setup!();
    let slack = SinkServer::always(Reply::status(500)).await;
    let hook = SinkServer::always(Reply::ok()).await;
    // Slack's three attempts take about 3 s (backoff 1 s, then 2 s).
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("webhook-url", &hook.url("/hook")),
            ("webhook-preset", "json"),
            ("sink-backoff", "1s"),
            ("sink-backoff-max", "2s"),
        ],
    )
    .await;

    let crash = died("web");
    let published = Instant::now();
    w.publish(&crash).await;
    let h = hook.wait_for(1, "the webhook message").await;
    assert!(
        h[0].at - published < Duration::from_secs(3),
        "webhook got it only after {:?}",
        h[0].at - published
    );
    let v = h[0].json();
    assert_eq!(v["source"], "hemostat", "{v:#}");
    assert_eq!(v["notifications"][0]["container"]["name"], "web", "{v:#}");

    let dead = w
        .wait_stream(DEAD_LETTER_STREAM, "slack's dead letter", |d| {
            d.iter().any(|e| e.get("source") == "alert:slack")
        })
        .await;
    let slack_got = slack.received();
    assert!(
        h[0].at < slack_got[2].at,
        "the webhook waited for slack's retries"
    );
    let letter = dead
        .iter()
        .find(|e| e.get("source") == "alert:slack")
        .unwrap();
    assert!(letter.get("reason").contains("500"), "{letter:?}");
    assert!(letter.get("payload").contains("web"), "{letter:?}");
    assert_eq!(dead.len(), 1, "only slack failed: {dead:#?}");

    w.wait_decision("failed", "slack", &crash.id).await;
    w.wait_decision("sent", "webhook-json", &crash.id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        slack.received().len(),
        3,
        "exactly --sink-attempts requests"
    );
    assert_eq!(hook.received().len(), 1);

    let deadline = Instant::now() + WAIT;
    loop {
        let m = alert.metrics().await;
        if m.lines()
            .any(|l| l == "hemostat_dead_lettered_total{channel=\"alert:slack\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no dead-letter metric:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_sink_times_out_and_others_unaffected() {
    let w = setup!();
    let slack = SinkServer::always(Reply::hang()).await;
    let hook = SinkServer::always(Reply::ok()).await;
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("webhook-url", &hook.url("/hook")),
            ("webhook-preset", "json"),
        ],
    )
    .await;

    let first = died("web");
    let t = Instant::now();
    w.publish(&first).await;
    let h = hook.wait_for(1, "the webhook message").await;
    assert!(
        h[0].at - t < Duration::from_secs(2),
        "webhook got it after {:?}",
        h[0].at - t
    );

    let second = died("db");
    let t = Instant::now();
    w.publish(&second).await;
    let h = hook.wait_for(2, "the second webhook message").await;
    assert!(
        h[1].at - t < Duration::from_secs(2),
        "webhook got the second after {:?}",
        h[1].at - t
    );
    assert!(names(&h[1].body, "db"), "{}", h[1].body);

    let failed = w.wait_decision("failed", "slack", &first.id).await;
    assert!(failed.get("detail").contains("timed out"), "{failed:?}");
    assert!(slack.received().len() >= 3, "every attempt reached slack");
    let dead = w
        .wait_stream(DEAD_LETTER_STREAM, "slack's dead letter", |d| {
            d.iter().any(|e| e.get("source") == "alert:slack")
        })
        .await;
    assert!(dead.iter().all(|e| e.get("source") == "alert:slack"));
    w.wait_decision("sent", "webhook-json", &first.id).await;
    w.wait_decision("sent", "webhook-json", &second.id).await;

    // Still running: a third alert still reaches the webhook.
    assert!(!alert.done.is_finished(), "the service stopped");
    let third = died("cache");
    w.publish(&third).await;
    let h = hook.wait_for(3, "the third webhook message").await;
    assert!(names(&h[2].body, "cache"), "{}", h[2].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_mutes_exactly_what_it_matches_until_expiry() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[("slack-webhook-url", &slack.url("/slack"))],
    )
    .await;

    let now = Utc::now();
    let silence = Silence {
        id: format!("s-{}", random_id()),
        host: None,
        container: Some("web".into()),
        kind: Some("died".into()),
        expires_at: now + chrono::Duration::seconds(3),
        comment: "deploying web".into(),
        created_by: "alert-test".into(),
        created_at: now,
    };
    hemostat_alert::add_silence(&w.bus, &silence).await.unwrap();
    alert.svc.refresh_silences().await.unwrap();
    let audit = w.xrange(AUDIT_STREAM).await;
    assert!(
        audit
            .iter()
            .any(|e| e.get("event_type") == "silence_added"
                && e.get("silence").contains(&silence.id)),
        "{audit:#?}"
    );

    let muted = died("web");
    let other = died("db");
    w.publish(&muted).await;
    w.publish(&other).await;
    let silenced = w.wait_decision("silenced", "-", &muted.id).await;
    assert!(silenced.get("detail").contains(&silence.id), "{silenced:?}");
    w.wait_decision("sent", "slack", &other.id).await;
    let got = slack.received();
    assert_eq!(got.len(), 1, "only db was told");
    assert!(names(&got[0].body, "db"), "{}", got[0].body);
    assert!(
        !names(&got[0].body, "web"),
        "the silenced one was told: {}",
        got[0].body
    );

    // After expiry (and a refresh), the same problem is news again.
    let after = silence.expires_at + chrono::Duration::milliseconds(2500);
    let wait = (after - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    let mut conn = w.redis.conn().await;
    let left: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(hemostat_alert::SILENCES_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "the expired silence was not dropped: {left:?}"
    );
    let again = died("web");
    w.publish(&again).await;
    w.wait_decision("sent", "slack", &again.id).await;
    let got = slack.wait_for(2, "web after the silence").await;
    assert!(names(&got[1].body, "web"), "{}", got[1].body);
    let history = w.history().await;
    assert_eq!(
        history
            .iter()
            .filter(|e| e.get("decision") == "silenced")
            .count(),
        1,
        "{history:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_logged_or_published() {
    const SECRET: &str = "SECRETTOKEN123";
    const HOOK_SECRET: &str = "SECRETHOOK456";
    let w = setup!();
    let slack = SinkServer::always(Reply::status(500)).await;
    // A webhook nobody listens on: the connection error must not carry its URL either.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[
            (
                "slack-webhook-url",
                &slack.url(&format!("/services/T000/B000/{SECRET}")),
            ),
            (
                "webhook-url",
                &format!("http://127.0.0.1:{closed}/hooks/{HOOK_SECRET}"),
            ),
        ],
    )
    .await;

    let crash = died("web");
    w.publish(&crash).await;
    let dead = w
        .wait_stream(DEAD_LETTER_STREAM, "both dead letters", |d| {
            d.iter().any(|e| e.get("source") == "alert:slack")
                && d.iter().any(|e| e.get("source") == "alert:webhook-json")
        })
        .await;
    let got = slack.received();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0].path,
        format!("/services/T000/B000/{SECRET}"),
        "the secret URL was really used"
    );
    let hook_letter = dead
        .iter()
        .find(|e| e.get("source") == "alert:webhook-json")
        .unwrap();
    assert!(
        hook_letter.get("reason").contains("unreachable"),
        "{hook_letter:?}"
    );
    w.wait_decision("failed", "slack", &crash.id).await;
    w.wait_decision("failed", "webhook-json", &crash.id).await;

    // Every key, every stream entry, every field.
    let mut conn = w.redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut scanned_streams = 0;
    let mut everything = String::new();
    for key in &keys {
        everything.push_str(key);
        everything.push('\n');
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        match kind.as_str() {
            "stream" => {
                scanned_streams += 1;
                for e in w.xrange(key).await {
                    for (k, v) in e.fields {
                        everything.push_str(&format!("{k}={v}\n"));
                    }
                }
            }
            "string" => {
                let v: String = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                everything.push_str(&v);
            }
            "hash" => {
                let v: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                everything.push_str(&format!("{v:?}"));
            }
            other => panic!("unexpected key type {other} for {key}: scan it too"),
        }
    }
    assert!(
        keys.iter().any(|k| k == DEAD_LETTER_STREAM)
            && keys.iter().any(|k| k == hemostat_alert::HISTORY_STREAM),
        "{keys:?}"
    );
    assert!(scanned_streams >= 3, "{keys:?}");
    for secret in [SECRET, HOOK_SECRET] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked into redis:\n{everything}"
        );
    }
    let metrics = alert.metrics().await;
    assert!(!metrics.contains(SECRET) && !metrics.contains(HOOK_SECRET));
}

/// The `hemostat-alert` binary next to this test's executable, built if need be.
fn alert_binary() -> Option<PathBuf> {
    // target/<profile>/deps/alert-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent()?.parent()?.to_path_buf();
    let bin = profile_dir.join(format!("hemostat-alert{}", std::env::consts::EXE_SUFFIX));
    // Always ask cargo: a no-op when it is fresh, and never a stale binary under test.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "hemostat-alert",
        "--bin",
        "hemostat-alert",
    ])
    .arg("--target-dir")
    .arg(profile_dir.parent()?)
    .current_dir(hemostat_tests::repo_root())
    .stdout(Stdio::null());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => eprintln!("building hemostat-alert: {other:?}"),
    }
    bin.exists().then_some(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_test_command() {
    init_logs();
    let Some(bin) = tokio::task::spawn_blocking(alert_binary).await.unwrap() else {
        require(
            "the hemostat-alert binary",
            "not built and cargo could not build it",
        );
        return;
    };
    const SECRET: &str = "SECRETCLI789";
    let ok = SinkServer::always(Reply::ok()).await;
    let broken = SinkServer::always(Reply::status(500)).await;
    let cwd = tempfile::tempdir().unwrap();
    let run = |url: String| {
        let bin = bin.clone();
        let cwd = cwd.path().to_path_buf();
        tokio::process::Command::new(bin)
            .args([
                "--sink-attempts",
                "2",
                "--sink-backoff",
                "100ms",
                "--sink-backoff-max",
                "200ms",
                "--sink-timeout",
                "2s",
                "test",
            ])
            .current_dir(cwd)
            .env("SLACK_WEBHOOK_URL", url)
            .env_remove("WEBHOOK_URL")
            .env_remove("PAGERDUTY_ROUTING_KEY")
            .env_remove("HEMOSTAT_NOTIFY_URLS")
            .env_remove("HEMOSTAT_NOTIFY_ROUTES")
            .env_remove("HEMOSTAT_DASHBOARD_URL")
            .kill_on_drop(true)
            .output()
    };

    let out = tokio::time::timeout(WAIT, run(ok.url(&format!("/services/{SECRET}"))))
        .await
        .expect("test command hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("slack (slack, route default): sent"),
        "{stdout}"
    );
    let got = ok.received();
    assert_eq!(got.len(), 1);
    let v = got[0].json();
    hemostat_alert::render::check_block_kit(&v).unwrap_or_else(|e| panic!("{e}: {v:#}"));
    assert!(
        got[0].body.contains("hemostat test notification"),
        "{}",
        got[0].body
    );

    let out = tokio::time::timeout(WAIT, run(broken.url(&format!("/services/{SECRET}"))))
        .await
        .expect("test command hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("500"), "{stdout}");
    assert_eq!(broken.received().len(), 2, "--sink-attempts 2");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the webhook URL leaked:\n{stdout}\n{stderr}"
    );
}

/// A remediation result answers one crash: a second crash-and-restart cycle (after the first
/// one resolved) must be told in full, not folded into the first cycle's restart message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_incident_is_told_in_full() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[("slack-webhook-url", &slack.url("/slack"))],
    )
    .await;
    let restarted = || {
        Envelope::new(
            "responder",
            HOST,
            Payload::RemediationComplete(RemediationResult {
                container: Some(container("web")),
                request_id: random_id(),
                action: Action::Restart,
                outcome: Outcome::Success,
                reason: "restarted; running after 1s".into(),
                verification: None,
                duration_ms: 1000,
                dry_run: false,
                guard: None,
                problem: None,
            }),
        )
    };
    let mut told = 0;
    for cycle in 1..=2 {
        for env in [died("web"), restarted(), recovered("web")] {
            w.publish(&env).await;
            let what = format!("cycle {cycle}: {}", env.event_type());
            let history = w
                .wait_stream(hemostat_alert::HISTORY_STREAM, &what, |h| {
                    h.iter().any(|e| e.get("event_id") == env.id)
                })
                .await;
            let decision = history
                .iter()
                .find(|e| e.get("event_id") == env.id)
                .unwrap();
            assert_eq!(decision.get("decision"), "sent", "{what}: {decision:?}");
            told += 1;
            let got = slack.wait_for(told, &what).await;
            assert!(names(&got[told - 1].body, "web"), "{}", got[told - 1].body);
        }
    }
    let restarts = slack
        .received()
        .iter()
        .filter(|r| r.body.contains("Restart of web succeeded"))
        .count();
    assert_eq!(restarts, 2, "both restarts told");
}

/// The real binary, running as the service at debug level for hemostat's own crates: after a
/// failed and an unreachable delivery, nothing it wrote names the webhook secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_logs_never_show_webhook_secrets() {
    const SECRET: &str = "SECRETLOG321";
    const HOOK_SECRET: &str = "SECRETLOGHOOK654";
    let w = setup!();
    let Some(bin) = tokio::task::spawn_blocking(alert_binary).await.unwrap() else {
        require(
            "the hemostat-alert binary",
            "not built and cargo could not build it",
        );
        return;
    };
    let slack = SinkServer::always(Reply::status(500)).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cwd = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(&bin)
        .args([
            "--redis-url",
            &w.redis.url(),
            "--listen",
            "127.0.0.1:0",
            "--host-id",
            HOST,
            "--group-wait",
            "300ms",
            "--sink-attempts",
            "2",
            "--sink-backoff",
            "100ms",
            "--sink-backoff-max",
            "200ms",
            "--sink-timeout",
            "2s",
        ])
        .current_dir(cwd.path())
        .env(
            "SLACK_WEBHOOK_URL",
            slack.url(&format!("/services/T1/B1/{SECRET}")),
        )
        .env(
            "WEBHOOK_URL",
            format!("http://127.0.0.1:{closed}/hooks/{HOOK_SECRET}"),
        )
        .env_remove("PAGERDUTY_ROUTING_KEY")
        .env_remove("HEMOSTAT_DASHBOARD_URL")
        .env(
            "RUST_LOG",
            "info,hemostat_alert=debug,hemostat_common=debug",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = w.redis.client();
    for channel in [Channel::RemediationComplete, Channel::HealthAlert] {
        wait_for_group(&client, channel.stream(), hemostat_alert::AGENT).await;
    }
    let crash = died("web");
    w.publish(&crash).await;
    w.wait_stream(DEAD_LETTER_STREAM, "both dead letters", |d| {
        d.iter().any(|e| e.get("source") == "alert:slack")
            && d.iter().any(|e| e.get("source") == "alert:webhook-json")
    })
    .await;
    assert_eq!(slack.received().len(), 2);

    let pid = child.id().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the service did not stop on SIGTERM")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    assert!(
        all.contains("dead-lettered") && all.contains("retrying"),
        "the failures were logged:\n{all}"
    );
    for secret in [SECRET, HOOK_SECRET] {
        assert!(!all.contains(secret), "{secret} was logged:\n{all}");
    }
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "clean stop on SIGTERM:\n{all}"
    );
}

/// A graceful stop during the group wait sends what was waiting rather than losing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_group_wait_still_delivers() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("group-wait", "30s"),
        ],
    )
    .await;
    let crash = died("web");
    w.publish(&crash).await;
    // Handled (its id marked seen), so it sits in the batch being grouped.
    let seen = format!("hemostat:seen:{}:{}", hemostat_alert::AGENT, crash.id);
    let mut conn = w.redis.conn().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let n: u32 = redis::cmd("EXISTS")
            .arg(&seen)
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the crash was never handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(slack.received().is_empty(), "sent before the group wait");
    let stopped = Instant::now();
    assert!(alert.stop().await, "stops cleanly");
    assert!(stopped.elapsed() < Duration::from_secs(5));
    let got = slack.received();
    assert_eq!(got.len(), 1, "the waiting batch went out at shutdown");
    assert!(names(&got[0].body, "web"), "{}", got[0].body);
    w.wait_decision("sent", "slack", &crash.id).await;
}

/// A 4xx other than 429 (a revoked webhook) will not get better: one attempt, dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_is_not_retried() {
    let w = setup!();
    let slack = SinkServer::always(Reply::status(404)).await;
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[("slack-webhook-url", &slack.url("/slack"))],
    )
    .await;
    let crash = died("web");
    w.publish(&crash).await;
    let failed = w.wait_decision("failed", "slack", &crash.id).await;
    assert!(failed.get("detail").contains("404"), "{failed:?}");
    let dead = w.xrange(DEAD_LETTER_STREAM).await;
    assert!(
        dead.iter()
            .any(|e| e.get("source") == "alert:slack" && e.get("reason").contains("1 attempt")),
        "{dead:#?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slack.received().len(), 1, "a 404 is not retried");
}

fn remediation(name: &str, outcome: Outcome) -> Envelope {
    Envelope::new(
        "responder",
        HOST,
        Payload::RemediationComplete(RemediationResult {
            container: Some(container(name)),
            request_id: random_id(),
            action: Action::Restart,
            outcome,
            reason: "verification: not running after 30s".into(),
            verification: None,
            duration_ms: 30_000,
            dry_run: false,
            guard: None,
            problem: None,
        }),
    )
}

/// PagerDuty: a failed remediation triggers an incident keyed by the container, a successful
/// one pages nobody, the container's recovery resolves the incident, and the routing key (a
/// secret) never reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_pages_failures_and_resolves_on_recovery() {
    const KEY: &str = "R0UTINGKEYSECRET";
    let w = setup!();
    let pd = SinkServer::always(Reply::status(202)).await;
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("pagerduty-routing-key", KEY),
            ("pagerduty-url", &pd.url("/v2/enqueue")),
        ],
    )
    .await;

    // In one batch: a crash (not pageable), a successful restart of another container (not
    // pageable) and a failed restart (pageable): one trigger.
    let crash = died("web");
    let fixed = remediation("db", Outcome::Success);
    let failed = remediation("web", Outcome::Failed);
    for env in [&crash, &fixed, &failed] {
        w.publish(env).await;
    }
    let got = pd.wait_for(1, "the trigger").await;
    let v = got[0].json();
    assert_eq!(v["event_action"], "trigger", "{v:#}");
    assert_eq!(v["routing_key"], KEY);
    assert_eq!(v["dedup_key"], format!("hemostat/{HOST}/web"));
    assert_eq!(v["payload"]["severity"], "critical");
    assert!(
        v["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("Restart of web failed"),
        "{v:#}"
    );
    w.wait_decision("sent", "pagerduty", &failed.id).await;

    let back = recovered("web");
    w.publish(&back).await;
    let got = pd.wait_for(2, "the resolve").await;
    let v = got[1].json();
    assert_eq!(v["event_action"], "resolve", "{v:#}");
    assert_eq!(v["dedup_key"], format!("hemostat/{HOST}/web"));
    w.wait_decision("sent", "pagerduty", &back.id).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pd.received().len(), 2, "only the failure and the recovery");

    let mut everything = String::new();
    for stream in [
        hemostat_alert::HISTORY_STREAM,
        DEAD_LETTER_STREAM,
        Channel::RemediationComplete.stream(),
    ] {
        everything.push_str(&format!("{:?}", w.xrange(stream).await));
    }
    assert!(!everything.contains(KEY), "the routing key leaked");
}

/// With crash notices off (`--notify-crashes false`: "only tell me what hemostat did"), an
/// incident opened by a failed remediation must still be resolved when the container recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_resolves_without_crash_notices() {
    let w = setup!();
    let pd = SinkServer::always(Reply::status(202)).await;
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("pagerduty-routing-key", "R0UTING"),
            ("pagerduty-url", &pd.url("/v2/enqueue")),
            ("notify-crashes", "false"),
        ],
    )
    .await;
    let failed = remediation("web", Outcome::Failed);
    w.publish(&failed).await;
    let got = pd.wait_for(1, "the trigger").await;
    assert_eq!(got[0].json()["event_action"], "trigger");
    w.publish(&recovered("web")).await;
    let got = pd.wait_for(2, "the resolve").await;
    assert_eq!(got[1].json()["event_action"], "resolve");
}

/// A sink's severity filter keeps part of a batch out of its message: the history must say
/// what each sink was really sent, not "sent" for notifications it never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_only_what_each_sink_was_sent() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let _alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("slack-min-severity", "critical"),
            ("group-wait", "1s"),
        ],
    )
    .await;
    // One batch: a critical crash and an info remediation result.
    let crash = died("web");
    let fixed = remediation("db", Outcome::Success);
    w.publish(&crash).await;
    w.publish(&fixed).await;
    let got = slack.wait_for(1, "the crash").await;
    assert!(names(&got[0].body, "web"), "{}", got[0].body);
    assert!(
        !names(&got[0].body, "db"),
        "below slack's minimum: {}",
        got[0].body
    );
    w.wait_decision("sent", "slack", &crash.id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = w.history().await;
    let lie: Vec<_> = history
        .iter()
        .filter(|e| e.get("event_id") == fixed.id && e.get("decision") == "sent")
        .collect();
    assert!(
        lie.is_empty(),
        "recorded as sent to slack but never sent: {lie:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// At least once: a notification is owned in Redis until a sink took it.
// ---------------------------------------------------------------------------------------------

/// Settings as owned pairs, for an agent on a runtime of its own.
fn owned(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits until the envelope `id` is marked handled (it is in the group, or recorded).
async fn handled(w: &World, id: &str) {
    let seen = format!("hemostat:seen:{}:{id}", hemostat_alert::AGENT);
    let mut conn = w.redis.conn().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let n: u32 = redis::cmd("EXISTS")
            .arg(&seen)
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{id} was never handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL of the alert agent while a notification waits in `group_wait`: the envelope was
/// acked (it is in the group, in Redis), and the restarted agent sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_group_wait_the_successor_delivers() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let settings = owned(&[
        ("slack-webhook-url", &slack.url("/slack")),
        ("group-wait", "3s"),
    ]);
    let doomed = hemostat_tests::pipeline::Isolated::new();
    let _first = doomed
        .run(RunningAlert::start_owned(w.redis.url(), settings.clone()))
        .await;
    let crash = died("web");
    w.publish(&crash).await;
    handled(&w, &crash.id).await;
    doomed.kill();
    assert!(
        slack.received().is_empty(),
        "nothing was sent before the kill"
    );
    // Restarted at once, as `restart: unless-stopped` does.
    let _second = RunningAlert::start_owned(w.redis.url(), settings).await;
    let got = slack
        .wait_for(1, "the grouped notification, sent by the successor")
        .await;
    assert!(names(&got[0].body, "web"), "{}", got[0].body);
    w.wait_decision("sent", "slack", &crash.id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slack.received().len(), 1, "sent once");
}

/// SIGKILL while the sink answers 503 and the delivery waits for its next attempt: the
/// restarted agent carries on with the retries, and the sink receives the notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_retries_the_successor_delivers() {
    let w = setup!();
    let slack = SinkServer::start(vec![Reply::status(503), Reply::status(503)], Reply::ok()).await;
    let settings = owned(&[
        ("slack-webhook-url", &slack.url("/slack")),
        ("sink-attempts", "5"),
        ("sink-backoff", "1s"),
        ("sink-backoff-max", "2s"),
    ]);
    let doomed = hemostat_tests::pipeline::Isolated::new();
    let _first = doomed
        .run(RunningAlert::start_owned(w.redis.url(), settings.clone()))
        .await;
    let crash = died("db");
    w.publish(&crash).await;
    slack.wait_for(1, "the first attempt (503)").await;
    doomed.kill();
    let _second = RunningAlert::start_owned(w.redis.url(), settings).await;
    let got = slack.wait_for(3, "the retries, then the delivery").await;
    assert!(got.iter().all(|r| names(&r.body, "db")), "{got:?}");
    let sent = w.wait_decision("sent", "slack", &crash.id).await;
    assert!(
        sent.get("detail").contains("after 3 attempt(s)"),
        "{sent:?}"
    );
    assert!(
        w.xrange(DEAD_LETTER_STREAM).await.is_empty(),
        "nothing dead-lettered"
    );
}

/// A sink answering 429 with an absurd `Retry-After` (1e20 seconds) is retried after the
/// longest backoff, the worker does not panic, and the next notification is delivered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_is_clamped_and_delivery_goes_on() {
    let w = setup!();
    let slack = SinkServer::start(vec![Reply::too_many("1e20")], Reply::ok()).await;
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[("slack-webhook-url", &slack.url("/slack"))],
    )
    .await;
    let first = died("api");
    w.publish(&first).await;
    let got = slack
        .wait_for(2, "the retry after the clamped Retry-After")
        .await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap < Duration::from_secs(3),
        "clamped to the 500 ms backoff: {gap:?}"
    );
    w.wait_decision("sent", "slack", &first.id).await;
    let next = died("cache");
    w.publish(&next).await;
    w.wait_decision("sent", "slack", &next.id).await;
    let (code, body) = alert.healthz().await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"panics\":0"), "{body}");
    assert!(alert.stop().await);
}

/// An entry of 50 MB on a stream the alert agent reads is dead-lettered unread; the agent stays
/// healthy and the next escalation is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_entry_is_dead_lettered_and_the_agent_goes_on() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[("slack-webhook-url", &slack.url("/slack"))],
    )
    .await;
    let huge = "x".repeat(50 * 1024 * 1024);
    let mut conn = w.redis.conn().await;
    let _: String = redis::cmd("XADD")
        .arg(Channel::Alerts.stream())
        .arg("*")
        .arg("event_type")
        .arg("escalation")
        .arg("envelope")
        .arg(&huge)
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(huge);
    let dead = w
        .wait_stream(DEAD_LETTER_STREAM, "the oversized entry", |d| {
            d.iter().any(|e| e.get("reason").contains("over the"))
        })
        .await;
    let e = dead
        .iter()
        .find(|e| e.get("reason").contains("over the"))
        .unwrap();
    assert!(e.get("reason").contains("52428800 bytes"), "{e:?}");
    assert!(e.get("payload").is_empty(), "parked unread: {e:?}");
    let crash = died("web");
    w.publish(&crash).await;
    w.wait_decision("sent", "slack", &crash.id).await;
    let (code, body) = alert.healthz().await;
    assert_eq!(code, 200, "{body}");
    assert!(alert.stop().await);
}

/// With PagerDuty configured beside Slack, a clean stop is prompt and clean (no sink queue
/// keeps a worker waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_with_pagerduty_is_prompt() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let pd = SinkServer::always(Reply::status(202)).await;
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("pagerduty-routing-key", "R0UTINGKEY0000000000000000000000"),
            ("pagerduty-url", &pd.url("/v2/enqueue")),
        ],
    )
    .await;
    let crash = died("web");
    w.publish(&crash).await;
    w.wait_decision("sent", "slack", &crash.id).await;
    let stopped = Instant::now();
    assert!(alert.stop().await, "a clean stop");
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "stopped in {:?}",
        stopped.elapsed()
    );
}

/// A sink whose outbox is at its bound (1,000 deliveries, the head leased by an instance that
/// is still working on it) takes no more: the next notification is recorded `failed` and
/// dead-lettered with its content, never dropped unseen, and the other sinks still get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_records_failed_and_dead_letters() {
    let w = setup!();
    let slack = SinkServer::always(Reply::ok()).await;
    let hook = SinkServer::always(Reply::ok()).await;
    {
        let mut conn = w.redis.conn().await;
        let outbox = hemostat_alert::store::keys::outbox("slack");
        let mut fill = redis::pipe();
        for i in 0..1000u32 {
            fill.cmd("ZADD")
                .arg(&outbox)
                .arg(i)
                .arg(format!("held-{i:04}"));
        }
        let lease = (Utc::now().timestamp_millis() + 600_000).to_string();
        fill.cmd("HSET")
            .arg(hemostat_alert::store::keys::delivery("held-0000"))
            .arg(&[
                ("sink", "slack"),
                ("batch", "[]"),
                ("attempts", "0"),
                ("next_at", "0"),
                ("owner", "alert-elsewhere-1"),
                ("lease_until", lease.as_str()),
                ("created", "0"),
            ]);
        let _: () = fill.query_async(&mut conn).await.unwrap();
    }
    let alert = RunningAlert::start(
        &w.redis.url(),
        &[
            ("slack-webhook-url", &slack.url("/slack")),
            ("webhook-url", &hook.url("/hook")),
        ],
    )
    .await;
    let crash = died("web");
    w.publish(&crash).await;
    let failed = w.wait_decision("failed", "slack", &crash.id).await;
    assert_eq!(failed.get("detail"), "sink queue full", "{failed:?}");
    w.wait_decision("sent", "webhook-json", &crash.id).await;
    let dead = w
        .wait_stream(DEAD_LETTER_STREAM, "the dead letter", |d| !d.is_empty())
        .await;
    assert_eq!(dead[0].get("source"), "alert:slack", "{dead:?}");
    assert!(
        dead[0].get("reason").contains("holds 1000 deliveries"),
        "{dead:?}"
    );
    assert!(dead[0].get("payload").contains(&crash.id), "{dead:?}");
    assert!(slack.received().is_empty(), "the held head was never sent");
    let metrics = alert.metrics().await;
    assert!(
        metrics.contains("hemostat_dead_lettered_total{channel=\"alert:slack\"} 1"),
        "{metrics}"
    );
    assert!(alert.stop().await);
}

/// Each instance decides against the state it last read or wrote, and every write is checked
/// against the versions in Redis: what another replica changed in between is read again, never
/// decided on stale. Here replica A told a crash; replica B took the recovery; a second
/// recovery handled by A must find nothing firing (A's own copy still says firing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_decides_on_what_another_changed_since() {
    let w = setup!();
    // No flush during the test: the group and the fingerprint change only by these handlers.
    let settings = [("group-wait", "60s")];
    let a = RunningAlert::start(&w.redis.url(), &settings).await;
    let b = RunningAlert::start(&w.redis.url(), &settings).await;

    let crash = died("web");
    assert!(matches!(
        a.svc.handle(crash.clone()).await,
        hemostat_common::bus::Disposition::Ack
    ));
    let back = recovered("web");
    assert!(matches!(
        b.svc.handle(back.clone()).await,
        hemostat_common::bus::Disposition::Ack
    ));
    let again = recovered("web");
    assert!(matches!(
        a.svc.handle(again.clone()).await,
        hemostat_common::bus::Disposition::Ack
    ));

    let history = w.history().await;
    let folded: Vec<&Entry> = history
        .iter()
        .filter(|e| e.get("decision") == "folded")
        .collect();
    assert_eq!(folded.len(), 1, "{history:#?}");
    assert_eq!(folded[0].get("event_id"), again.id);
    assert!(
        folded[0].get("detail").contains("nothing firing"),
        "{:?}",
        folded[0]
    );
    let mut conn = w.redis.conn().await;
    let mut grouped: Vec<String> = redis::cmd("HKEYS")
        .arg("hemostat:alert:group")
        .query_async(&mut conn)
        .await
        .unwrap();
    grouped.sort();
    let mut want = vec![crash.id.clone(), back.id.clone()];
    want.sort();
    assert_eq!(
        grouped, want,
        "the crash and its one recovery wait in the group"
    );
}

/// A batch is decided in stream order, each notification on what the ones before it made of
/// its fingerprint (a repeat of a crash just queued is folded), written in one step; the same
/// batch delivered again (the agent died before its ack) records nothing twice, and a new
/// envelope in it is still decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_in_order_and_a_redelivered_batch_records_nothing_twice() {
    let w = setup!();
    let a = RunningAlert::start(&w.redis.url(), &[("group-wait", "60s")]).await;
    let crash = died("web");
    let repeat = died("web");
    let other = died("db");
    let batch = vec![crash.clone(), repeat.clone(), other.clone()];
    let d = a.svc.handle_batch(batch.clone()).await;
    assert_eq!(d, vec![hemostat_common::bus::Disposition::Ack; 3]);

    let late = died("cache");
    let mut again = batch;
    again.push(late.clone());
    let d = a.svc.handle_batch(again).await;
    assert_eq!(d, vec![hemostat_common::bus::Disposition::Ack; 4]);

    let history = w.history().await;
    let folded: Vec<&Entry> = history
        .iter()
        .filter(|e| e.get("decision") == "folded")
        .collect();
    assert_eq!(folded.len(), 1, "{history:#?}");
    assert_eq!(folded[0].get("event_id"), repeat.id);
    let mut conn = w.redis.conn().await;
    let mut grouped: Vec<String> = redis::cmd("HKEYS")
        .arg("hemostat:alert:group")
        .query_async(&mut conn)
        .await
        .unwrap();
    grouped.sort();
    let mut want = vec![crash.id, other.id, late.id];
    want.sort();
    assert_eq!(grouped, want);
}

/// A batch that would overfill the group fills it to its bound, sends it, and the rest start
/// the next group: a group never holds more than 500 notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_never_overfills_the_group() {
    let w = setup!();
    let hook = SinkServer::start(Vec::new(), Reply::ok()).await;
    let a = RunningAlert::start(
        &w.redis.url(),
        &[("group-wait", "60s"), ("webhook-url", &hook.url("/hook"))],
    )
    .await;
    let batch: Vec<Envelope> = (0..600).map(|i| died(&format!("c{i:03}"))).collect();
    let d = a.svc.handle_batch(batch).await;
    assert_eq!(d.len(), 600);
    assert!(
        d.iter()
            .all(|d| *d == hemostat_common::bus::Disposition::Ack)
    );
    let mut conn = w.redis.conn().await;
    let left: usize = redis::cmd("HLEN")
        .arg("hemostat:alert:group")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 100, "the first 500 left as one group");
    hook.wait_for(1, "the full group").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = w
            .history()
            .await
            .iter()
            .filter(|e| e.get("decision") == "sent")
            .count();
        if sent == 500 {
            break;
        }
        assert!(sent < 500, "only the full group was sent: {sent}");
        assert!(std::time::Instant::now() < deadline, "{sent} of 500 sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hook.received().len(), 1, "one message for the 500");
}

// ---------------------------------------------------------------------------------------------
// Notification URLs and routes, against servers that speak each service's protocol.
// ---------------------------------------------------------------------------------------------

/// The default route's URLs: one of every scheme, each at the local server that speaks it.
fn every_url(chat: &ChatServices, smtp: &SmtpServer) -> Vec<String> {
    let (base, host, k) = (chat.base(), chat.host(), CHAT_SECRET);
    vec![
        format!("slack://T01/B02/{k}?api={base}"),
        format!("discord://42/{k}?api={base}"),
        format!("teams://example.webhook.office.com/teams/webhookb2/{k}?api={base}"),
        format!("ntfy://{host}/hemostat-alerts"),
        format!("gotify://{host}/{k}"),
        format!("telegram://{BOT_TOKEN}/-100123?api={base}"),
        format!("pushover://uQiRzpo4DXghDmr9QzzfQu27cmVRsG@{k}?api={base}"),
        format!("matrix://{k}@{host}/%21ops:example.org"),
        format!(
            "smtp://oncall%40example.com:{k}@127.0.0.1:{}?tls=none&to=ops@example.com,sre@example.com",
            smtp.port
        ),
        format!("pagerduty://{k}?api={base}"),
        format!("opsgenie://{k}?api={base}"),
        format!("json://{host}/hook/default"),
    ]
}

/// An escalation about container `name`, with `labels`.
fn escalation_for(name: &str, labels: &[(&str, &str)]) -> Envelope {
    let mut c = container(name);
    c.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Envelope::new(
        "responder",
        HOST,
        Payload::Escalation(hemostat_common::events::Escalation {
            proposal: None,
            kind: hemostat_common::events::EscalationKind::CircuitBreakerOpen,
            severity: Severity::Critical,
            container: Some(c),
            summary: format!("circuit breaker open for {name} <b>&amp; @here"),
            detail: "3 restarts in 10 min".into(),
        }),
    )
}

const ALL_SINKS: [&str; 12] = [
    "slack",
    "discord",
    "teams",
    "ntfy",
    "gotify",
    "telegram",
    "pushover",
    "matrix",
    "email",
    "pagerduty",
    "opsgenie",
    "json",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notification_url_speaks_its_protocol_and_a_route_gets_only_its_containers() {
    let w = setup!();
    let chat = ChatServices::start().await;
    let smtp = SmtpServer::start(Some(("oncall@example.com", CHAT_SECRET))).await;
    let urls = every_url(&chat, &smtp).join(" ");
    // The db route: its own Slack channel and webhook, critical only.
    let routes = format!(
        "db: severity=critical slack://T01/DB/{k}?api={base} json://{host}/hook/db",
        k = CHAT_SECRET,
        base = chat.base(),
        host = chat.host()
    );
    let agent = RunningAlert::start(
        &w.redis.url(),
        &[
            ("notify-urls", urls.as_str()),
            ("notify-routes", routes.as_str()),
        ],
    )
    .await;

    let web = escalation_for("web", &[]);
    let pg = escalation_for("pgdb-primary", &[("hemostat.notify", "db")]);
    w.publish(&web).await;
    w.publish(&pg).await;
    for sink in ALL_SINKS {
        w.wait_decision("sent", sink, &web.id).await;
        w.wait_decision("filtered", sink, &pg.id).await;
    }
    for sink in ["db-slack", "db-json"] {
        w.wait_decision("sent", sink, &pg.id).await;
        w.wait_decision("filtered", sink, &web.id).await;
    }

    let hits = chat.hits();
    let failed: Vec<_> = hits.iter().filter(|h| h.status >= 300).collect();
    assert!(
        failed.is_empty(),
        "a service refused a request: {failed:#?}"
    );
    let services: std::collections::BTreeSet<&str> = hits.iter().map(|h| h.service).collect();
    for s in [
        "slack",
        "discord",
        "teams",
        "ntfy",
        "gotify",
        "telegram",
        "pushover",
        "matrix",
        "pagerduty",
        "opsgenie",
        "json",
    ] {
        assert!(services.contains(s), "{s} was never reached: {services:?}");
    }
    // The db route's container reached only the db route's URLs, and no other container did.
    let is_db =
        |h: &&hemostat_tests::chat::Hit| h.path.contains("/DB/") || h.path.ends_with("/hook/db");
    for h in &hits {
        let mentions_pg = h.body.contains("pgdb-primary");
        assert_eq!(
            mentions_pg,
            is_db(&h),
            "{} {} {}",
            h.service,
            h.path,
            h.body
        );
    }
    assert_eq!(hits.iter().filter(is_db).count(), 2, "{hits:#?}");

    // What each service was told, in its own terms.
    let one = |service: &str| hits.iter().find(|h| h.service == service).unwrap().clone();
    let tg = one("telegram").json();
    assert_eq!(tg["chat_id"], "-100123");
    assert_eq!(tg["parse_mode"], "HTML");
    let text = tg["text"].as_str().unwrap();
    // The container's words are shown, not parsed: its `<b>` is escaped, our own is a tag.
    assert!(
        text.starts_with("<b>") && text.contains("&lt;b&gt;"),
        "{text}"
    );
    assert!(
        text.contains("@\u{200B}here"),
        "a mention must be broken: {text}"
    );
    let po = one("pushover");
    assert_eq!(po.form("priority").as_deref(), Some("1"));
    assert!(
        po.form("title")
            .unwrap()
            .contains("circuit breaker open for web")
    );
    let mx = one("matrix");
    assert_eq!(mx.method, "PUT");
    assert!(
        mx.path
            .contains("/rooms/%21ops%3Aexample.org/send/m.room.message/"),
        "{}",
        mx.path
    );
    assert_eq!(mx.json()["msgtype"], "m.notice");
    assert!(
        mx.json()["formatted_body"]
            .as_str()
            .unwrap()
            .contains("&lt;b&gt;")
    );
    let gotify = one("gotify").json();
    assert_eq!(gotify["priority"], 8);
    let og = one("opsgenie").json();
    assert_eq!(og["priority"], "P1");
    assert_eq!(og["alias"], format!("hemostat/{HOST}/web"));
    let nt = one("ntfy");
    assert_eq!(nt.path, "/hemostat-alerts");
    assert_eq!(nt.headers["priority"], "5");
    assert_eq!(one("pagerduty").json()["event_action"], "trigger");

    // Email: one message, to both recipients, from the authenticated user.
    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let m = &mails[0];
    assert_eq!(m.user.as_deref(), Some("oncall@example.com"));
    assert_eq!(m.to, ["ops@example.com", "sre@example.com"]);
    assert!(
        m.header("Subject")
            .unwrap()
            .contains("circuit breaker open for web"),
        "{m:#?}"
    );
    assert!(m.body().contains("3 restarts in 10 min"), "{}", m.body());
    assert!(
        !m.data.contains("pgdb-primary"),
        "the db container reached the default route's email"
    );

    // No secret reached Redis (history, dead letters) or a log-shaped place.
    let history = w.history().await;
    for e in &history {
        for v in e.fields.values() {
            assert!(
                !v.contains(CHAT_SECRET),
                "a secret reached the history: {v}"
            );
        }
    }
    assert!(agent.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_closes_what_the_pagers_opened_and_matrix_retries_are_one_message() {
    let w = setup!();
    let chat = ChatServices::start().await;
    let (base, host, k) = (chat.base(), chat.host(), CHAT_SECRET);
    let urls = format!("opsgenie://{k}?api={base} matrix://{k}@{host}/%21ops:example.org");
    let agent = RunningAlert::start(&w.redis.url(), &[("notify-urls", urls.as_str())]).await;
    // The crash is told (Matrix takes everything, Opsgenie only what pages), then the
    // escalation pages, then the recovery resolves what was firing.
    let died = died("api");
    w.publish(&died).await;
    w.wait_decision("sent", "matrix", &died.id).await;
    let crash = escalation_for("api", &[]);
    w.publish(&crash).await;
    w.wait_decision("sent", "opsgenie", &crash.id).await;
    let back = recovered("api");
    w.publish(&back).await;
    w.wait_decision("sent", "opsgenie", &back.id).await;
    let hits = chat.hits();
    let og: Vec<_> = hits.iter().filter(|h| h.service == "opsgenie").collect();
    assert_eq!(og.len(), 2, "{og:#?}");
    assert_eq!(og[0].path, "/v2/alerts");
    assert_eq!(
        og[1].path,
        format!("/v2/alerts/hemostat%2F{HOST}%2Fapi/close"),
        "the recovery closes the alert its crash opened"
    );
    // Matrix: the same delivery sent twice is one transaction id, so one event.
    let mx: Vec<_> = hits.iter().filter(|h| h.service == "matrix").collect();
    assert!(!mx.is_empty());
    let batch = hemostat_alert::engine::Batch {
        notifications: vec![
            hemostat_alert::notify::from_envelope(
                &crash,
                hemostat_alert::notify::Sources {
                    crashes: true,
                    false_alarms: false,
                },
            )
            .unwrap(),
        ],
    };
    let a = hemostat_alert::sink::transaction_id("matrix", &batch);
    let b = hemostat_alert::sink::transaction_id("matrix", &batch);
    assert_eq!(a, b);
    assert_ne!(a, hemostat_alert::sink::transaction_id("matrix-2", &batch));
    assert!(agent.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_that_the_server_defers_is_retried_and_sent_once() {
    let w = setup!();
    let smtp = SmtpServer::start(None).await;
    smtp.fail_next(1);
    let urls = format!(
        "smtp://127.0.0.1:{}?tls=none&to=ops@example.com&from=hemostat@example.com",
        smtp.port
    );
    let agent = RunningAlert::start(&w.redis.url(), &[("notify-urls", urls.as_str())]).await;
    let crash = died("mailer");
    w.publish(&crash).await;
    let sent = w.wait_decision("sent", "email", &crash.id).await;
    assert!(
        sent.get("detail").contains("2 attempt(s)"),
        "{:?}",
        sent.fields
    );
    let mails = smtp.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.mails().len(), 1, "{mails:#?}");
    assert!(agent.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_command_reaches_every_url_and_names_each() {
    init_logs();
    let Some(bin) = tokio::task::spawn_blocking(alert_binary).await.unwrap() else {
        require(
            "the hemostat-alert binary",
            "not built and cargo could not build it",
        );
        return;
    };
    let chat = ChatServices::start().await;
    let smtp = SmtpServer::start(Some(("oncall@example.com", CHAT_SECRET))).await;
    let routes = format!("db: json://{}/hook/db", chat.host());
    let cwd = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin)
            .args(["--sink-attempts", "1", "--sink-timeout", "2s", "test"])
            .current_dir(cwd.path())
            .env("HEMOSTAT_NOTIFY_URLS", every_url(&chat, &smtp).join("\n"))
            .env("HEMOSTAT_NOTIFY_ROUTES", routes)
            .env_remove("SLACK_WEBHOOK_URL")
            .env_remove("WEBHOOK_URL")
            .env_remove("PAGERDUTY_ROUTING_KEY")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("test command hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for sink in ALL_SINKS {
        assert!(
            stdout.contains(&format!("{sink} ("))
                && stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("{sink} (")) && l.contains(": sent")),
            "{sink}: {stdout}"
        );
    }
    assert!(
        stdout.contains("db-json (json, route db): sent"),
        "{stdout}"
    );
    assert_eq!(smtp.mails().len(), 1);
    assert!(
        !stdout.contains(CHAT_SECRET) && !stderr.contains(CHAT_SECRET),
        "{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_command_opens_lists_and_ends_a_window() {
    let w = setup!();
    let Some(bin) = tokio::task::spawn_blocking(alert_binary).await.unwrap() else {
        require(
            "the hemostat-alert binary",
            "not built and cargo could not build it",
        );
        return;
    };
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| {
        let bin = bin.clone();
        let url = w.redis.url();
        let cwd = cwd.path().to_path_buf();
        async move {
            let out = tokio::time::timeout(
                WAIT,
                tokio::process::Command::new(bin)
                    .arg(format!("--redis-url={url}"))
                    .args(["maintenance"])
                    .args(args)
                    .current_dir(cwd)
                    .env("USER", "ops")
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("maintenance command hung")
            .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = run([
        "add",
        "--for",
        "30m",
        "--container",
        "db*",
        "--pauses",
        "notifications",
        "--comment",
        "backup",
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("pauses notifications") && out.contains("HOLDS NOW"),
        "{out}"
    );
    let id = out.split_whitespace().nth(3).unwrap().to_owned();
    let (code, out, _) = run(vec!["list".into()]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&id) && out.contains("containers db*") && out.contains("backup"),
        "{out}"
    );
    let (code, out, err) = run([
        "add", "--days", "mon-fri", "--from", "02:00", "--to", "25:00",
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert_ne!(code, Some(0), "a bad window is refused: {out}\n{err}");
    assert!(err.contains("to:"), "{err}");
    let (code, out, _) = run(vec!["end".into(), id.clone()]).await;
    assert_eq!(code, Some(0), "{out}");
    let (code, _, err) = run(vec!["end".into(), id.clone()]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("no maintenance window"), "{err}");
    let windows = hemostat_common::windows::load(&w.bus).await.unwrap();
    assert!(windows.is_empty(), "{windows:?}");
    let audit = w.xrange(hemostat_common::events::AUDIT_STREAM).await;
    let added = audit
        .iter()
        .find(|e| e.get("event_type") == "maintenance_added")
        .unwrap();
    assert_eq!(added.get("by"), "cli:ops");
    assert!(
        audit
            .iter()
            .any(|e| e.get("event_type") == "maintenance_ended" && e.get("window_id") == id)
    );
}
