//! Test support for hemostat's integration and end-to-end tests: a private `redis-server` per
//! test, Docker containers built from our own patient image, an in-process monitor, and a
//! reader that waits for envelopes on a stream.
//!
//! Every resource is owned by the test that made it and cleaned up on drop. Names carry a
//! random prefix so parallel tests never see each other's containers or keys.
//!
//! With `CI=true` a missing Docker or Redis is a failure; elsewhere the test is skipped with a
//! loud message (see [`require`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod chat;
pub mod engine2;
pub mod openai_stub;
pub mod pipeline;
pub mod prometheus;
pub mod records;
pub mod sentinel;
pub mod smtp;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, StartContainerOptions};
use hemostat_common::events::{Channel, Envelope};

/// The image our tests run. Built on demand from `tests/patient` with no registry.
pub const PATIENT_IMAGE: &str = "hemostat-patient:latest";

/// Whether we are in CI, where missing infrastructure is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Called when `what` is unavailable: panics in CI, else prints a loud skip notice and returns
/// false so the test can return early.
pub fn require(what: &str, why: &str) -> bool {
    if in_ci() {
        panic!("{what} is required in CI (CI=true) but unavailable: {why}");
    }
    eprintln!(
        "\n*** SKIPPING: {what} unavailable ({why}). Set CI=true to make this a failure. ***\n"
    );
    false
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A short random id for names and prefixes.
pub fn random_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A private redis-server on 127.0.0.1 with a throwaway config, killed on drop.
pub struct TestRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    password: Option<String>,
    /// Whether each service has its own user (`hemostat-<service>`, password `<service>-pw`).
    acl: bool,
}

impl TestRedis {
    /// Starts one, or returns `None` (after [`require`]) when `redis-server` is missing.
    pub fn start() -> Option<TestRedis> {
        Self::start_with_password(None)
    }

    pub fn start_with_password(password: Option<&str>) -> Option<TestRedis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            require("redis-server", "not on PATH (scripts/test.sh installs it)");
            return None;
        }
        let mut r = TestRedis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            password: password.map(str::to_owned),
            acl: false,
        };
        r.spawn();
        Some(r)
    }

    /// A server with one user per service, with exactly the rules the compose stack gives
    /// them ([`hemostat_common::acl`]); the default user (the test's own connections) keeps
    /// every right. [`TestRedis::url_as`] is a service's URL.
    pub fn start_with_acl() -> Option<TestRedis> {
        let mut r = Self::start()?;
        r.acl = true;
        r.stop();
        r.spawn();
        Some(r)
    }

    /// The URL with `service`'s own user (see [`TestRedis::start_with_acl`]).
    pub fn url_as(&self, service: &str) -> String {
        assert!(self.acl, "url_as needs TestRedis::start_with_acl");
        format!(
            "redis://{}:{service}-pw@127.0.0.1:{}",
            hemostat_common::acl::user(service),
            self.port
        )
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.arg("--requirepass").arg(p);
        }
        if self.acl {
            for service in hemostat_common::acl::SERVICES {
                cmd.arg("--user")
                    .arg(hemostat_common::acl::user(service))
                    .arg("on")
                    .arg(format!(">{service}-pw"));
                cmd.args(hemostat_common::acl::rules(service).unwrap_or_default());
            }
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// Kills the server (data is lost: it has no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Docker client, or `None` (after [`require`]) when Docker is unreachable.
pub async fn docker() -> Option<Docker> {
    let docker = match Docker::connect_with_defaults() {
        Ok(d) => d,
        Err(e) => {
            require("docker", &e.to_string());
            return None;
        }
    };
    let docker = match docker.negotiate_version().await {
        Ok(d) => d,
        Err(e) => {
            require("docker", &e.to_string());
            return None;
        }
    };
    match docker.ping().await {
        Ok(_) => Some(docker),
        Err(e) => {
            require("docker", &e.to_string());
            None
        }
    }
}

static IMAGE_BUILT: Mutex<bool> = Mutex::new(false);

/// Builds the patient image once per test process (fast when nothing changed).
pub fn ensure_patient_image() {
    let mut built = IMAGE_BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if *built {
        return;
    }
    let script = repo_root().join("scripts/build-patient-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("PATIENT_IMAGE", PATIENT_IMAGE)
        .output()
        .expect("run build-patient-image.sh");
    assert!(
        out.status.success(),
        "building the patient image failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    *built = true;
}

/// The Docker API proxy image (docker-read and docker-write in docker-compose.yml), the tag
/// `scripts/up.sh` and `scripts/test.sh` build.
pub const DOCKER_PROXY_IMAGE: &str = "hemostat-docker-proxy:local";

static PROXY_IMAGE_BUILT: Mutex<bool> = Mutex::new(false);

/// Builds the Docker API proxy image (Debian's haproxy, no registry) if it is missing. Its
/// configuration is mounted from `docker/docker-proxy/` by whoever runs it, as compose does, so
/// an image from an older checkout still tests the current rules.
pub fn ensure_docker_proxy_image() {
    let mut built = PROXY_IMAGE_BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if *built {
        return;
    }
    let present = Command::new("docker")
        .args(["image", "inspect", DOCKER_PROXY_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/build-docker-proxy-image.sh"))
            .env("DOCKER_PROXY_IMAGE", DOCKER_PROXY_IMAGE)
            .output()
            .expect("run build-docker-proxy-image.sh");
        assert!(
            out.status.success(),
            "building the docker proxy image failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *built = true;
}

/// How to run one patient container.
#[derive(Debug, Clone, Default)]
pub struct PatientSpec {
    /// Arguments to `/patient` (e.g. `["run", "--exit-code", "3", "--after", "1"]`).
    pub args: Vec<String>,
    pub labels: HashMap<String, String>,
    pub memory_limit_mb: Option<i64>,
    /// A health check running `/patient probe` at this interval.
    pub health_interval: Option<Duration>,
    /// What the health check prints besides its verdict (`/patient probe --say TEXT`).
    pub health_says: Option<String>,
    pub health_retries: Option<i64>,
    pub health_start_period: Option<Duration>,
    pub restart_policy: Option<String>,
    /// Docker's network mode (`none` on a second engine); the engine's default when unset.
    pub network_mode: Option<String>,
}

impl PatientSpec {
    /// A patient in hemostat's scope (`hemostat.enable=true`) running `args`.
    pub fn watched(args: &[&str]) -> PatientSpec {
        PatientSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            labels: HashMap::from([("hemostat.enable".to_owned(), "true".to_owned())]),
            ..PatientSpec::default()
        }
    }
}

/// A container this test created; force-removed on drop.
pub struct Patient {
    pub id: String,
    pub name: String,
}

impl Patient {
    /// Creates and starts a patient named `<prefix>-<suffix>`; panics (failing the test) if
    /// Docker refuses.
    pub async fn start(docker: &Docker, prefix: &str, suffix: &str, spec: PatientSpec) -> Patient {
        Patient::try_start(docker, prefix, suffix, spec)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Patient::start`] for harnesses that report errors instead of panicking. Once created,
    /// the container is owned by the returned value, so a failed start leaves nothing behind.
    pub async fn try_start(
        docker: &Docker,
        prefix: &str,
        suffix: &str,
        spec: PatientSpec,
    ) -> anyhow::Result<Patient> {
        use anyhow::Context as _;
        ensure_patient_image();
        let name = format!("{prefix}-{suffix}");
        let restart_policy = spec
            .restart_policy
            .as_deref()
            .map(|p| {
                p.parse::<bollard::models::RestartPolicyNameEnum>()
                    .map_err(|e| anyhow::anyhow!("restart policy {p:?}: {e}"))
            })
            .transpose()?;
        let healthcheck = spec.health_interval.map(|every| HealthConfig {
            test: Some(
                ["CMD", "/patient", "probe"]
                    .into_iter()
                    .map(str::to_owned)
                    .chain(
                        spec.health_says
                            .iter()
                            .flat_map(|t| ["--say".to_owned(), t.clone()]),
                    )
                    .collect(),
            ),
            interval: Some(every.as_nanos() as i64),
            timeout: Some(Duration::from_secs(2).as_nanos() as i64),
            retries: Some(spec.health_retries.unwrap_or(1)),
            start_period: spec.health_start_period.map(|d| d.as_nanos() as i64),
            ..HealthConfig::default()
        });
        let mut labels = spec.labels.clone();
        labels.insert("hemostat.test".into(), prefix.to_owned());
        let body = ContainerCreateBody {
            image: Some(PATIENT_IMAGE.into()),
            cmd: Some(spec.args.clone()),
            labels: Some(labels),
            healthcheck,
            host_config: Some(HostConfig {
                memory: spec.memory_limit_mb.map(|m| m * 1024 * 1024),
                memory_swap: spec.memory_limit_mb.map(|m| m * 1024 * 1024),
                restart_policy: restart_policy.map(|name| bollard::models::RestartPolicy {
                    name: Some(name),
                    maximum_retry_count: None,
                }),
                network_mode: spec.network_mode.clone(),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .with_context(|| format!("create patient container {name}"))?;
        let patient = Patient {
            id: created.id,
            name,
        };
        docker
            .start_container(&patient.id, None::<StartContainerOptions>)
            .await
            .with_context(|| format!("start patient container {}", patient.name))?;
        Ok(patient)
    }

    /// Waits (up to `timeout`) until the container is no longer running and returns its state
    /// then (exit code, `OOMKilled`, `FinishedAt`); panics on timeout.
    pub async fn wait_for_exit(
        &self,
        docker: &Docker,
        timeout: Duration,
    ) -> bollard::models::ContainerState {
        let deadline = Instant::now() + timeout;
        loop {
            let state = docker
                .inspect_container(
                    &self.id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .ok()
                .and_then(|i| i.state);
            if let Some(st) = state
                && st.running == Some(false)
                && st
                    .finished_at
                    .as_deref()
                    .is_some_and(|f| !f.starts_with("0001"))
            {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {} still running after {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a docker CLI command against this container (as a person would).
    pub fn cli(&self, verb: &[&str]) {
        let status = Command::new("docker")
            .args(verb)
            .arg(&self.id)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("docker cli");
        assert!(status.success(), "docker {verb:?} {} failed", self.name);
    }
}

impl Drop for Patient {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Reads a stream from the beginning and waits for matching envelopes. Reading the stream
/// rather than subscribing means nothing published before we started looking is missed.
pub struct StreamReader {
    client: redis::Client,
    stream: String,
    last_id: String,
    pub seen: Vec<Envelope>,
}

impl StreamReader {
    pub fn new(redis: &TestRedis, channel: Channel) -> StreamReader {
        StreamReader::from_client(redis.client(), channel)
    }

    /// A reader on any Redis (the end-to-end test's compose Redis).
    pub fn from_client(client: redis::Client, channel: Channel) -> StreamReader {
        StreamReader {
            client,
            stream: channel.stream().to_owned(),
            last_id: "0".into(),
            seen: Vec::new(),
        }
    }

    /// Pulls whatever is new (tolerating a Redis that is down or restarting).
    pub async fn poll(&mut self) {
        let Ok(mut conn) = self.client.get_multiplexed_async_connection().await else {
            return;
        };
        let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(200)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(&self.last_id)
                .query_async(&mut conn)
                .await;
        let Ok(Some(reply)) = reply else { return };
        for key in reply.keys {
            for entry in key.ids {
                self.last_id = entry.id.clone();
                if let Some(raw) = entry.get::<String>("envelope")
                    && let Ok(env) = Envelope::from_json(&raw)
                {
                    self.seen.push(env);
                }
            }
        }
    }

    /// After a Redis restart (no persistence), the stream starts over.
    pub fn rewind(&mut self) {
        self.last_id = "0".into();
    }

    /// Waits until an envelope matching `pred` has been seen, up to `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Envelope) -> bool,
    ) -> Envelope {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.seen.iter().find(|e| pred(e)) {
                return e.clone();
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .seen
                    .iter()
                    .map(|e| format!("{} {}", e.event_type(), short(e)))
                    .collect();
                panic!("timed out after {timeout:?} waiting for {what}; seen: {seen:#?}");
            }
            self.poll().await;
        }
    }

    /// Keeps reading for `d` and returns everything matching `pred` (to assert absence or
    /// exact counts after the fact).
    pub async fn collect_for(
        &mut self,
        d: Duration,
        pred: impl Fn(&Envelope) -> bool,
    ) -> Vec<Envelope> {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            self.poll().await;
        }
        self.seen.iter().filter(|e| pred(e)).cloned().collect()
    }
}

fn short(e: &Envelope) -> String {
    let v = serde_json::to_value(&e.payload).unwrap_or_default();
    let data = &v["data"];
    format!(
        "{} {} user={} reminder={}",
        data["container"]["name"].as_str().unwrap_or("-"),
        data["kind"].as_str().unwrap_or("-"),
        data["user_initiated"],
        data["reminder"]
    )
}

/// The container alert inside a health envelope, if it is one.
pub fn container_alert(e: &Envelope) -> Option<&hemostat_common::events::ContainerAlert> {
    use hemostat_common::events::Payload;
    match &e.payload {
        Payload::ContainerUnhealthy(a)
        | Payload::ContainerUserAction(a)
        | Payload::ContainerRecovered(a) => Some(a),
        _ => None,
    }
}

/// Installs a test-friendly log subscriber once (`RUST_LOG` to see more).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // What the agents decided, for the output of a failing test.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,hemostat_monitor=info,hemostat_analyzer=info,hemostat_responder=info,hemostat_alert=info",
                    )
                }),
        )
        .with_test_writer()
        .try_init();
}

/// A monitor running inside the test process, against the real Docker engine.
pub struct RunningMonitor {
    pub shutdown: hemostat_common::shutdown::Shutdown,
    pub http: std::net::SocketAddr,
    done: tokio::task::JoinHandle<bool>,
}

impl RunningMonitor {
    /// Starts a monitor for `redis_url` with fast test settings; `extra` flags override them.
    pub async fn start(redis_url: &str, extra: &[&str]) -> RunningMonitor {
        RunningMonitor::start_on(redis_url, "test-host", extra).await
    }

    /// [`RunningMonitor::start`] reporting as host `host_id` (with `--docker-host` in `extra`
    /// to watch another engine).
    pub async fn start_on(redis_url: &str, host_id: &str, extra: &[&str]) -> RunningMonitor {
        use hemostat_monitor::config::MonitorArgs;
        let mut args: Vec<String> = [
            "hemostat-monitor",
            "--redis-url",
            redis_url,
            "--listen",
            "127.0.0.1:0",
            "--host-id",
            host_id,
            "--stats-interval",
            "1s",
            "--host-interval",
            "1s",
            "--heartbeat-interval",
            "1s",
            "--shutdown-timeout",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: MonitorArgs = hemostat_common::config::parse_from(args).expect("monitor args");
        let cfg = a.validate().expect("monitor config");
        let shutdown = hemostat_common::shutdown::Shutdown::new();
        let health = hemostat_common::http::Health::default();
        let docker = hemostat_monitor::connect_docker(a.docker_host.as_deref(), &health, &shutdown)
            .await
            .expect("docker");
        let ctx = hemostat_common::agent::AgentContext::start(
            &a.common,
            hemostat_monitor::AGENT,
            host_id.into(),
            shutdown.clone(),
        )
        .await
        .expect("agent context");
        hemostat_monitor::spawn(cfg, docker, &ctx);
        let http = ctx.http_addr;
        let done = tokio::spawn(ctx.finish());
        // Give the event loop its first listing and stream request.
        tokio::time::sleep(Duration::from_millis(500)).await;
        RunningMonitor {
            shutdown,
            http,
            done,
        }
    }

    /// Stops it and returns whether it stopped cleanly within its timeout.
    pub async fn stop(self) -> bool {
        self.shutdown.cancel();
        self.done.await.unwrap_or(false)
    }
}

/// A Unix-socket proxy in front of the Docker socket that a test can cut and restore, to play
/// "Docker restarted" without touching the real engine (which other tests are using).
pub struct DockerProxy {
    path: PathBuf,
    _dir: tempfile::TempDir,
    cut: tokio_util::sync::CancellationToken,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl DockerProxy {
    /// Listens on a fresh socket and forwards every connection to `/var/run/docker.sock`.
    pub fn start() -> DockerProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = DockerProxy {
            path: dir.path().join("docker.sock"),
            _dir: dir,
            cut: tokio_util::sync::CancellationToken::new(),
            accept: None,
        };
        p.listen();
        p
    }

    /// The `DOCKER_HOST` value that goes through the proxy.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn listen(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).expect("bind proxy socket");
        let cut = tokio_util::sync::CancellationToken::new();
        self.cut = cut.clone();
        self.accept = Some(tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    () = cut.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => return },
                };
                let cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    tokio::select! {
                        () = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                });
            }
        }));
    }

    /// Drops every proxied connection and refuses new ones, like a Docker daemon going away.
    pub async fn cut(&mut self) {
        self.cut.cancel();
        if let Some(a) = self.accept.take() {
            let _ = a.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Accepts connections again, like the daemon coming back.
    pub fn restore(&mut self) {
        self.listen();
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}

/// Waits (up to 10 s) until `group` exists on `stream`.
pub async fn wait_for_group(client: &redis::Client, stream: &str, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            let reply: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(stream)
                    .query_async(&mut conn)
                    .await;
            if reply.is_ok_and(|r| r.groups.iter().any(|g| g.name == group)) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "consumer group {group} never appeared on {stream}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
