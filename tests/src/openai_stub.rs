//! A scripted stand-in for an OpenAI-compatible chat-completions endpoint, and an analyzer
//! running inside the test process that can be pointed at it.
//!
//! The stub is a real HTTP server on `127.0.0.1` speaking the real protocol
//! (`POST /v1/chat/completions`), so the analyzer's own client, timeouts, retries and
//! validation are exercised exactly as against a real provider. The test decides what it
//! answers, call by call, and reads back every request body it received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hemostat_common::events::Channel;
use tokio_util::sync::CancellationToken;

pub use crate::wait_for_group;

/// What the stub answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a well-formed chat completion whose message content is this string (normally
    /// the verdict JSON, but any text: the analyzer must validate it).
    Verdict(String),
    /// This status with this body (as `application/json`). A 429 also gets `Retry-After: 1`.
    Status(u16, String),
    /// Waits, then answers with the inner reply.
    Sleep(Duration, Box<Reply>),
    /// 200 with this raw body, which is not a chat completion (not even JSON, usually).
    Garbage(String),
    /// Holds the request until the test cancels this token, then answers with the inner reply:
    /// an analysis kept in flight for exactly as long as the test needs, not for a guessed time.
    Until(CancellationToken, Box<Reply>),
}

impl Reply {
    /// A verdict in the exact shape the analyzer asks for.
    pub fn verdict(
        action: &str,
        confidence: f64,
        root_cause: &str,
        reasoning: &str,
        is_false_alarm: bool,
    ) -> Reply {
        Reply::Verdict(
            serde_json::json!({
                "root_cause": root_cause,
                "action": action,
                "confidence": confidence,
                "reasoning": reasoning,
                "is_false_alarm": is_false_alarm,
            })
            .to_string(),
        )
    }

    /// A plausible, valid verdict: restart with confidence 0.9.
    pub fn good_restart() -> Reply {
        Reply::verdict(
            "restart",
            0.9,
            "the process crashed with exit code 1 after a fatal error",
            "exit code 1 and an error line in the logs",
            false,
        )
    }

    /// OpenAI's rate-limit answer.
    pub fn rate_limited() -> Reply {
        Reply::Status(
            429,
            r#"{"error":{"message":"rate limited","type":"rate_limit_error","param":null,"code":null}}"#
                .into(),
        )
    }

    /// Waits `d`, then answers `then`.
    pub fn after(d: Duration, then: Reply) -> Reply {
        Reply::Sleep(d, Box::new(then))
    }

    /// Waits until `gate` is cancelled, then answers `then`.
    pub fn when(gate: &CancellationToken, then: Reply) -> Reply {
        Reply::Until(gate.clone(), Box::new(then))
    }
}

/// The chat-completion body carrying `content` as the assistant's message.
pub fn chat_completion(content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "stub",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
    .to_string()
}

struct Inner {
    script: Mutex<VecDeque<Reply>>,
    default: Reply,
    requests: Mutex<Vec<String>>,
    count: AtomicUsize,
}

/// A scripted OpenAI-compatible endpoint on `127.0.0.1`; stops when dropped.
pub struct OpenAiStub {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for OpenAiStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiStub")
            .field("addr", &self.addr)
            .field("count", &self.count())
            .finish()
    }
}

impl OpenAiStub {
    /// Serves `script` in order, one reply per request, then `default` for every request after.
    pub async fn start(script: Vec<Reply>, default: Reply) -> OpenAiStub {
        let inner = Arc::new(Inner {
            script: Mutex::new(script.into()),
            default,
            requests: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the openai stub");
        let addr = listener.local_addr().expect("stub address");
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"error":{"message":"no such route in the stub","type":"invalid_request_error","param":null,"code":null}}"#,
                )
            })
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            })
        };
        OpenAiStub {
            addr,
            inner,
            stop,
            task,
        }
    }

    /// The base URL to configure as `OPENAI_BASE_URL` (ends in `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request body received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.inner.requests).clone()
    }

    /// How many chat-completion requests arrived.
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }
}

impl Drop for OpenAiStub {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn completions(State(inner): State<Arc<Inner>>, body: String) -> Response {
    lock(&inner.requests).push(body);
    inner.count.fetch_add(1, Ordering::SeqCst);
    let mut reply = lock(&inner.script)
        .pop_front()
        .unwrap_or_else(|| inner.default.clone());
    loop {
        match reply {
            Reply::Sleep(d, then) => {
                tokio::time::sleep(d).await;
                reply = *then;
            }
            Reply::Until(gate, then) => {
                gate.cancelled().await;
                reply = *then;
            }
            Reply::Verdict(content) => {
                return json_response(StatusCode::OK, chat_completion(&content));
            }
            Reply::Garbage(raw) => {
                return json_response(StatusCode::OK, raw);
            }
            Reply::Status(code, body) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut resp = json_response(status, body);
                if status == StatusCode::TOO_MANY_REQUESTS {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                return resp;
            }
        }
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A base URL on a port nothing listens on (bound, then released).
pub fn unreachable_base_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    format!("http://127.0.0.1:{port}/v1")
}

/// An analyzer running inside the test process, against the real Docker engine.
pub struct RunningAnalyzer {
    pub shutdown: hemostat_common::shutdown::Shutdown,
    pub http: SocketAddr,
    /// The analyzer itself, for its metrics (folded, duplicates, fallbacks).
    pub analyzer: Arc<hemostat_analyzer::Analyzer>,
    done: tokio::task::JoinHandle<bool>,
}

impl RunningAnalyzer {
    /// Starts an analyzer for `redis_url` with fast test settings plus `extra` flags, and
    /// returns once its consumer groups exist (a new group starts a look-back before now, so
    /// what was published just before is read too; waiting keeps the tests' reads of the
    /// groups simple).
    ///
    /// Without `--openai-base-url` / `--openai-api-key` in `extra`, the LLM is off, whatever
    /// the environment says (an `OPENAI_BASE_URL` in the environment is refused: the tests
    /// must never reach a real provider).
    pub async fn start(redis_url: &str, extra: &[&str]) -> RunningAnalyzer {
        RunningAnalyzer::start_with_docker(redis_url, extra, None).await
    }

    /// [`RunningAnalyzer::start`] with this Docker client instead of connecting to one from
    /// `--docker-host` / `DOCKER_HOST` (a client for a socket that does not exist shows that
    /// the analyzer needs no Docker access).
    pub async fn start_with_docker(
        redis_url: &str,
        extra: &[&str],
        docker: Option<bollard::Docker>,
    ) -> RunningAnalyzer {
        use hemostat_analyzer::config::AnalyzerArgs;
        let mut args: Vec<String> = [
            "hemostat-analyzer",
            "--redis-url",
            redis_url,
            "--listen",
            "127.0.0.1:0",
            "--host-id",
            "test-host",
            "--heartbeat-interval",
            "1s",
            "--shutdown-timeout",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !extra.contains(&"--openai-api-key") {
            // An empty key is no key: an OPENAI_API_KEY in the environment is ignored.
            args.extend(["--openai-api-key".to_owned(), String::new()]);
        }
        assert!(
            extra.contains(&"--openai-base-url") || std::env::var_os("OPENAI_BASE_URL").is_none(),
            "OPENAI_BASE_URL is set in the environment; unset it to run the analyzer tests"
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: AnalyzerArgs = hemostat_common::config::parse_from(args).expect("analyzer args");
        let cfg = a.validate().expect("analyzer config");
        let shutdown = hemostat_common::shutdown::Shutdown::new();
        // `--docker-host` in `extra` (a proxy) or `DOCKER_HOST`; else the local socket.
        let docker = match docker {
            Some(d) => d,
            None => hemostat_common::docker::connect_docker(
                a.docker_host.as_deref(),
                &hemostat_common::http::Health::default(),
                &shutdown,
            )
            .await
            .expect("docker"),
        };
        let ctx = hemostat_common::agent::AgentContext::start(
            &a.common,
            hemostat_analyzer::AGENT,
            "test-host".into(),
            shutdown.clone(),
        )
        .await
        .expect("agent context");
        let analyzer = Arc::new(
            hemostat_analyzer::Analyzer::new(
                cfg,
                docker,
                ctx.bus.clone(),
                hemostat_analyzer::AGENT,
            )
            .expect("analyzer"),
        );
        hemostat_analyzer::spawn(analyzer.clone(), &ctx);
        let http = ctx.http_addr;
        let done = tokio::spawn(ctx.finish());
        let client = redis::Client::open(redis_url).expect("redis url");
        for channel in [Channel::HealthAlert, Channel::RemediationComplete] {
            wait_for_group(&client, channel.stream(), hemostat_analyzer::AGENT).await;
        }
        RunningAnalyzer {
            shutdown,
            http,
            analyzer,
            done,
        }
    }

    /// Stops it and returns whether it stopped cleanly within its timeout.
    pub async fn stop(self) -> bool {
        self.shutdown.cancel();
        self.done.await.unwrap_or(false)
    }
}
