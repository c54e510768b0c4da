//! Responders running inside a test: one that a test stops as SIGTERM would
//! ([`RunningResponder`]), and one in a runtime of its own that a test can kill at any instant,
//! as SIGKILL would ([`Killable`]): every task of it stops at its next await, nothing more is
//! written, its connections close.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;

use hemostat_common::agent::AgentContext;
use hemostat_common::events::Channel;
use hemostat_common::http::Health;
use hemostat_common::shutdown::Shutdown;
use hemostat_responder::config::ResponderArgs;
use hemostat_responder::{FaultHook, Responder};

/// The host id every test agent uses.
pub const HOST: &str = "test-host";

/// The responder's consumer group on [`HOST`].
pub const RESPONDER_GROUP: &str = "responder:test-host";

/// A responder running inside the test process, against the real Docker engine.
pub struct RunningResponder {
    pub shutdown: Shutdown,
    pub responder: Arc<Responder>,
    /// Where its `/healthz` and `/metrics` listen.
    pub http: SocketAddr,
    done: tokio::task::JoinHandle<bool>,
}

impl RunningResponder {
    /// Starts a responder for `redis_url` with fast test settings (`extra` flags replace them)
    /// and returns once its consumer group exists.
    pub async fn start(redis_url: &str, extra: &[&str]) -> RunningResponder {
        RunningResponder::start_with(redis_url, extra, None).await
    }

    /// [`RunningResponder::start`] with a fault hook (see [`hemostat_responder::Point`]).
    pub async fn start_with(
        redis_url: &str,
        extra: &[&str],
        hook: Option<FaultHook>,
    ) -> RunningResponder {
        RunningResponder::start_on(redis_url, HOST, extra, hook).await
    }

    /// [`RunningResponder::start_with`] acting for host `host` (with `--docker-host` in
    /// `extra` for another engine).
    pub async fn start_on(
        redis_url: &str,
        host: &str,
        extra: &[&str],
        hook: Option<FaultHook>,
    ) -> RunningResponder {
        let defaults = [
            ("--redis-url", redis_url),
            ("--listen", "127.0.0.1:0"),
            ("--host-id", host),
            ("--heartbeat-interval", "1s"),
            ("--shutdown-timeout", "3s"),
            ("--backoff-initial", "1s"),
            ("--backoff-max", "4s"),
            ("--verify-timeout", "20s"),
            ("--stop-timeout", "1s"),
            ("--lease", "2s"),
            // Pinned, whatever the environment says.
            ("--dry-run", "false"),
            ("--monitor-all", "false"),
            ("--cleanup-volumes", "false"),
        ];
        let mut args = vec!["hemostat-responder".to_owned()];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: ResponderArgs = hemostat_common::config::parse_from(args).expect("responder args");
        let cfg = a.validate().expect("responder config");
        let shutdown = Shutdown::new();
        // `--docker-host` in `extra` (a proxy) or `DOCKER_HOST`; else the local socket.
        let docker = hemostat_common::docker::connect_docker(
            a.docker_host.as_deref(),
            &Health::default(),
            &shutdown,
        )
        .await
        .expect("docker");
        let ctx = AgentContext::start(
            &a.common,
            hemostat_responder::AGENT,
            host.into(),
            shutdown.clone(),
        )
        .await
        .expect("agent context");
        let mut responder = Responder::new(
            cfg,
            docker,
            ctx.bus.clone(),
            host,
            &ctx.identity.instance,
            shutdown.clone(),
        );
        if let Some(hook) = hook {
            responder = responder.with_fault_hook(hook);
        }
        let responder = Arc::new(responder);
        hemostat_responder::spawn(responder.clone(), &ctx);
        let http = ctx.http_addr;
        let done = tokio::spawn(ctx.finish());
        let client = redis::Client::open(redis_url).expect("redis url");
        crate::wait_for_group(
            &client,
            Channel::RemediationNeeded.stream(),
            &format!("responder:{host}"),
        )
        .await;
        RunningResponder {
            shutdown,
            responder,
            http,
            done,
        }
    }

    /// Stops it as SIGTERM does and returns whether it stopped cleanly within its timeout.
    pub async fn stop(self) -> bool {
        self.shutdown.cancel();
        self.done.await.unwrap_or(false)
    }
}

/// A runtime of its own for an agent under test, so that the test can kill everything the
/// agent runs at once, as SIGKILL would.
pub struct Isolated {
    rt: Option<tokio::runtime::Runtime>,
}

impl Default for Isolated {
    fn default() -> Isolated {
        Isolated::new()
    }
}

impl Isolated {
    pub fn new() -> Isolated {
        Isolated {
            rt: Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the agent"),
            ),
        }
    }

    /// Runs `f` on the agent's runtime and waits for its result (an agent's start).
    pub async fn run<F, T>(&self, f: F) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.rt
            .as_ref()
            .expect("running")
            .spawn(f)
            .await
            .expect("the agent's task")
    }

    /// Kills everything on it at once: no task runs another step.
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A responder in a runtime of its own, so that a test can kill it.
pub struct Killable {
    rt: Option<tokio::runtime::Runtime>,
    running: Option<RunningResponder>,
}

impl Killable {
    pub async fn start(redis_url: &str, extra: &[&str], hook: Option<FaultHook>) -> Killable {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the responder");
        let url = redis_url.to_owned();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let running = rt
            .spawn(async move {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                RunningResponder::start_with(&url, &extra, hook).await
            })
            .await
            .expect("the responder started");
        Killable {
            rt: Some(rt),
            running: Some(running),
        }
    }

    pub fn responder(&self) -> &Responder {
        &self.running.as_ref().expect("running").responder
    }

    /// Whether it has stopped itself as failed (a task of it ended or panicked).
    pub fn failed(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.shutdown.failed())
    }

    /// Kills it at once, as SIGKILL would: no task runs another step, nothing is handed back.
    pub fn kill(mut self) {
        self.running = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Stops it as SIGTERM does; true when it stopped cleanly.
    pub async fn terminate(mut self) -> bool {
        let r = self.running.take().expect("running");
        let clean = r.stop().await;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        clean
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.running = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A Slack-protocol sink: records every body it is sent.
pub async fn slack_sink() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = Router::new()
        .fallback(
            |State(got): State<Arc<Mutex<Vec<String>>>>, body: String| async move {
                got.lock().unwrap().push(body);
                "ok"
            },
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, got)
}

/// The alert service with `url`, sending to the Slack webhook `slack` (fast test settings);
/// returns once its consumer groups exist.
pub async fn alert(url: &str, slack: &str) -> (Shutdown, tokio::task::JoinHandle<bool>) {
    let (shutdown, done, _) = alert_serving(url, slack).await;
    (shutdown, done)
}

/// [`alert`], also returning where its `/healthz` and `/metrics` listen.
pub async fn alert_serving(
    url: &str,
    slack: &str,
) -> (Shutdown, tokio::task::JoinHandle<bool>, SocketAddr) {
    let args = [
        "hemostat-alert".to_owned(),
        format!("--redis-url={url}"),
        "--listen=127.0.0.1:0".into(),
        format!("--host-id={HOST}"),
        "--heartbeat-interval=1s".into(),
        "--shutdown-timeout=3s".into(),
        "--group-wait=500ms".into(),
        "--notify-crashes=true".into(),
        format!("--slack-webhook-url={slack}"),
        "--webhook-url=".into(),
        "--pagerduty-routing-key=".into(),
        "--notify-urls=".into(),
        "--notify-routes=".into(),
    ];
    let a: hemostat_alert::config::AlertArgs = hemostat_common::config::parse_from(args).unwrap();
    let cfg = a.validate().unwrap();
    let shutdown = Shutdown::new();
    let ctx = AgentContext::start(
        &a.common,
        hemostat_alert::AGENT,
        HOST.into(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let svc = Arc::new(hemostat_alert::AlertService::new(cfg, ctx.bus.clone()));
    let sinks = svc.sinks().unwrap();
    hemostat_alert::spawn(svc, sinks, &ctx);
    let http = ctx.http_addr;
    let done = tokio::spawn(ctx.finish());
    let client = redis::Client::open(url).unwrap();
    for c in [
        Channel::RemediationComplete,
        Channel::Alerts,
        Channel::HealthAlert,
    ] {
        crate::wait_for_group(&client, c.stream(), hemostat_alert::AGENT).await;
    }
    (shutdown, done, http)
}
