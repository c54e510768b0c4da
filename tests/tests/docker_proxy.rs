//! The Docker API proxies of docker-compose.yml (`docker-read` for the monitor, `docker-write` for
//! the responder; the analyzer reaches no engine), run from the hemostat-docker-proxy image with the
//! configuration in `docker/docker-proxy/`, as compose runs them, against the real engine: what
//! each lets through, what it refuses (and that a refused call changed nothing), and that the
//! agents' own Docker code works through them with nothing refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, ExecConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptions,
    ListContainersOptionsBuilder, LogsOptionsBuilder, PruneImagesOptionsBuilder,
    RemoveContainerOptionsBuilder, RestartContainerOptions, StartContainerOptions,
    StatsOptionsBuilder, StopContainerOptions,
};
use futures::StreamExt as _;
use hemostat_common::events::{Channel, Outcome};
use hemostat_common::http::Health;
use hemostat_common::shutdown::Shutdown;
use hemostat_responder::docker_ops;
use hemostat_tests::openai_stub::RunningAnalyzer;
use hemostat_tests::pipeline::RunningResponder;
use hemostat_tests::records::{engine_to_ourselves, result_of, started_at, status};
use hemostat_tests::{
    DOCKER_PROXY_IMAGE, Patient, PatientSpec, RunningMonitor, StreamReader, TestRedis, docker,
    ensure_docker_proxy_image, init_logs, random_id, repo_root,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(60);

/// How docker-compose.yml runs both proxies (checked against the file below).
const RUN_AS: [&str; 7] = [
    "--user",
    "0:0",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges:true",
    "--read-only",
];

/// One proxy container, run as compose runs it, its port published on 127.0.0.1 for the test
/// (compose publishes none); force-removed on drop.
struct Proxy {
    id: String,
    port: u16,
    /// `docker-read` or `docker-write`.
    name: &'static str,
}

impl Proxy {
    fn start(prefix: &str, name: &'static str) -> Proxy {
        ensure_docker_proxy_image();
        let cfg = repo_root().join(format!("docker/docker-proxy/{name}.cfg"));
        let inside = format!("/usr/local/etc/haproxy/{name}.cfg");
        let out = Command::new("docker")
            .args(["run", "-d", "--name", &format!("{prefix}-{name}")])
            .args(["--label", &format!("hemostat.test={prefix}")])
            .args(["--label", "hemostat.role=docker-proxy"])
            .args(["--label", "hemostat.protect=true"])
            .args(RUN_AS)
            .args(["-p", "127.0.0.1::2375"])
            .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
            .args(["-v", &format!("{}:{inside}:ro", cfg.display())])
            .args([DOCKER_PROXY_IMAGE, "-f", &inside])
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "starting {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut proxy = Proxy { id, port: 0, name };
        let port = Command::new("docker")
            .args(["port", &proxy.id, "2375/tcp"])
            .output()
            .expect("docker port");
        proxy.port = String::from_utf8_lossy(&port.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} has no published port: {port:?}"));
        proxy
    }

    /// Waits until it answers `/_ping`.
    async fn ready(self) -> Proxy {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // Docker's port forwarder accepts before HAProxy listens: a reset means not yet.
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                try_exchange(self.port, request("GET", "/_ping", &[], None)),
            )
            .await
                && status_of(&r) == 200
            {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered /_ping; its log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `DOCKER_HOST` that goes through it.
    fn host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// A client through it, connected the way every agent connects.
    async fn client(&self) -> Docker {
        tokio::time::timeout(
            Duration::from_secs(15),
            hemostat_common::docker::connect_docker(
                Some(&self.host()),
                &Health::default(),
                &Shutdown::new(),
            ),
        )
        .await
        .expect("connected in time")
        .expect("docker through the proxy")
    }

    fn log(&self) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.id])
            .output()
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The requests it refused: HAProxy logs only refused and failed requests.
    fn refused(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" 403 "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One HTTP/1.1 request as bytes. A body gets a `Content-Length` unless a header says it is
/// chunked.
fn request(method: &str, path: &str, headers: &[&str], body: Option<&str>) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    let chunked = headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("transfer-encoding"));
    if let Some(b) = body
        && !chunked
    {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("Connection: close\r\n\r\n");
    r.push_str(body.unwrap_or_default());
    r
}

/// Sends raw bytes on a fresh connection and returns everything that came back.
async fn exchange(port: u16, raw: String) -> String {
    tokio::time::timeout(Duration::from_secs(20), try_exchange(port, raw))
        .await
        .expect("a complete response in time")
        .expect("an exchange with the proxy")
}

async fn try_exchange(port: u16, raw: String) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(raw.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One request and whether the proxy must let it through.
struct Case {
    method: &'static str,
    /// `{id}` and `{name}` are the test container's; `{since}` and `{until}` bound an events
    /// call to the past minute; `{prefix}` is the test's.
    path: &'static str,
    headers: &'static [&'static str],
    body: Option<&'static str>,
    allowed: bool,
}

const fn ok(method: &'static str, path: &'static str) -> Case {
    Case {
        method,
        path,
        headers: &[],
        body: None,
        allowed: true,
    }
}

const fn no(method: &'static str, path: &'static str) -> Case {
    Case {
        method,
        path,
        headers: &[],
        body: None,
        allowed: false,
    }
}

const fn no_with(
    method: &'static str,
    path: &'static str,
    headers: &'static [&'static str],
    body: Option<&'static str>,
) -> Case {
    Case {
        method,
        path,
        headers,
        body,
        allowed: false,
    }
}

/// Sends every case through `proxy` and fails with the list of those that went the wrong way.
async fn check(proxy: &Proxy, target: &Patient, prefix: &str, cases: &[Case]) {
    let until = chrono::Utc::now().timestamp();
    let vars = [
        ("{id}", target.id.clone()),
        ("{name}", target.name.clone()),
        ("{since}", (until - 60).to_string()),
        ("{until}", until.to_string()),
        ("{prefix}", prefix.to_owned()),
    ];
    let mut wrong = Vec::new();
    for c in cases {
        let mut path = c.path.to_owned();
        for (k, v) in &vars {
            path = path.replace(k, v);
        }
        let r = exchange(proxy.port, request(c.method, &path, c.headers, c.body)).await;
        let code = status_of(&r);
        let right = if c.allowed {
            (200..300).contains(&code)
        } else {
            code == 403 && r.contains(&format!("refused by the {} proxy", proxy.name))
        };
        if !right {
            let head = r.lines().next().unwrap_or_default();
            wrong.push(format!(
                "{} {path} {:?}: expected {}, got {head:?}",
                c.method,
                c.headers,
                if c.allowed { "2xx" } else { "403" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} let through or refused the wrong requests:\n{}",
        proxy.name,
        wrong.join("\n")
    );
}

/// Refused by both proxies: what neither the monitor nor the responder needs, and
/// the ways of dressing up a refused call as an allowed one.
const REFUSED_BY_BOTH: &[Case] = &[
    no("POST", "/containers/create"),
    no("POST", "/v1.41/containers/create?name={prefix}-created"),
    no_with(
        "POST",
        "/v1.41/containers/create?name={prefix}-created",
        &[],
        Some(r#"{"Image":"hemostat-patient:latest","HostConfig":{"Privileged":true}}"#),
    ),
    no_with(
        "POST",
        "/v1.41/containers/{id}/exec",
        &[],
        Some(r#"{"Cmd":["/patient","probe"]}"#),
    ),
    no("POST", "/v1.41/containers/{id}/exec"),
    no("POST", "/v1.41/exec/0123456789ab/start"),
    no("POST", "/v1.41/containers/{id}/kill"),
    no("POST", "/v1.41/containers/{id}/pause"),
    no("POST", "/v1.41/containers/{id}/update"),
    no(
        "POST",
        "/v1.41/containers/{id}/rename?name={prefix}-renamed",
    ),
    no("POST", "/v1.41/containers/{id}/attach?stream=1&stdout=1"),
    no("POST", "/v1.41/containers/{id}/wait"),
    no("GET", "/v1.41/containers/{id}/export"),
    no("GET", "/v1.41/containers/{id}/archive?path=/"),
    no("PUT", "/v1.41/containers/{id}/archive?path=/"),
    no("GET", "/v1.41/containers/{id}/top"),
    no("GET", "/v1.41/containers/{id}/changes"),
    no("GET", "/v1.41/containers/{id}/attach/ws"),
    no("POST", "/v1.41/containers/prune"),
    no("POST", "/v1.41/images/create?fromImage=busybox&tag=latest"),
    no("POST", "/v1.41/build"),
    no("DELETE", "/v1.41/images/hemostat-patient:latest"),
    no("GET", "/v1.41/images/hemostat-patient:latest/get"),
    no("POST", "/v1.41/images/load"),
    no("GET", "/v1.41/volumes"),
    no("POST", "/v1.41/volumes/create"),
    no("POST", "/v1.41/volumes/prune"),
    no("GET", "/v1.41/networks"),
    no("POST", "/v1.41/networks/create"),
    no("POST", "/v1.41/networks/prune"),
    no("GET", "/v1.41/system/df"),
    no("POST", "/v1.41/swarm/init"),
    no("GET", "/v1.41/secrets"),
    no("POST", "/v1.41/plugins/pull?remote=x"),
    no("POST", "/v1.41/session"),
    no("POST", "/v1.41/auth"),
    // Encodings and dot segments: Docker would decode or clean them into a refused call.
    no("GET", "/v1.41/containers/%2e%2e/json"),
    no("POST", "/v1.41/containers/%63reate"),
    no("POST", "/v1.41/containers/{id}/restart/../../create"),
    no("POST", "/v1.41/containers/{id}/%65xec"),
    no("GET", "/v1.41//containers/json"),
    no("POST", "http://docker/v1.41/containers/create"),
    // An upgrade or a body never passes, even on an allowed path.
    no_with(
        "GET",
        "/v1.41/containers/{id}/json",
        &["Upgrade: tcp", "Connection: Upgrade"],
        None,
    ),
    no_with("GET", "/v1.41/containers/{id}/json", &[], Some("{}")),
];

/// The monitor's proxy: its reads pass (through their own client code),
/// every write and every other read is refused, and the refused calls changed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_read_lets_through_only_the_reads_of_the_monitor() {
    init_logs();
    let Some(direct) = docker().await else { return };
    let prefix = format!("hsproxy-{}", random_id());
    let proxy = Proxy::start(&prefix, "docker-read").ready().await;
    let p = Patient::start(&direct, &prefix, "target", unwatched()).await;
    let before = direct
        .inspect_container(&p.id, None::<InspectContainerOptions>)
        .await
        .unwrap();

    // What the agents do, with their own client, through the proxy.
    let docker = proxy.client().await;
    docker.info().await.expect("info");
    let listed = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await
        .expect("GET /containers/json");
    assert!(listed.iter().any(|c| c.id.as_deref() == Some(&p.id)));
    let i = docker_ops::inspect(&docker, &p.id).await.expect("inspect");
    assert_eq!(status(&i), "running");
    let stats = docker
        .stats(
            &p.id,
            Some(
                StatsOptionsBuilder::new()
                    .stream(false)
                    .one_shot(true)
                    .build(),
            ),
        )
        .next()
        .await;
    assert!(matches!(stats, Some(Ok(_))), "stats: {stats:?}");
    let logs: Vec<_> = docker
        .logs(
            &p.id,
            Some(
                LogsOptionsBuilder::new()
                    .stdout(true)
                    .stderr(true)
                    .tail("20")
                    .build(),
            ),
        )
        .collect()
        .await;
    assert!(logs.iter().all(Result::is_ok), "logs: {logs:?}");
    assert!(
        proxy.refused().is_empty(),
        "an agent read was refused:\n{}",
        proxy.log()
    );

    // Writes through the same client: each one refused with the proxy's reason.
    let refusals = [
        docker
            .stop_container(&p.id, None::<StopContainerOptions>)
            .await,
        docker
            .restart_container(&p.id, None::<RestartContainerOptions>)
            .await,
        docker
            .kill_container(&p.id, None::<KillContainerOptions>)
            .await,
        docker
            .start_container(&p.id, None::<StartContainerOptions>)
            .await,
        docker
            .remove_container(
                &p.id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await,
    ];
    for r in refusals {
        assert_refused(r, "docker-read");
    }
    assert_refused(create(&docker, &prefix).await, "docker-read");
    assert_refused(exec(&docker, &p.id).await, "docker-read");

    check(
        &proxy,
        &p,
        &prefix,
        &[
            ok("GET", "/_ping"),
            ok("HEAD", "/_ping"),
            ok("GET", "/version"),
            ok("GET", "/v1.41/version"),
            ok("GET", "/v1.41/info"),
            ok("GET", "/containers/json"),
            ok("GET", "/v1.41/containers/json?all=1"),
            ok("GET", "/v1.41/images/json"),
            ok("GET", "/v1.41/containers/{id}/json"),
            ok("GET", "/v1.41/containers/{name}/json"),
            ok(
                "GET",
                "/v1.41/containers/{id}/stats?stream=false&one-shot=true",
            ),
            ok(
                "GET",
                "/v1.41/containers/{id}/logs?stdout=1&stderr=1&tail=5",
            ),
            ok("GET", "/v1.41/events?since={since}&until={until}"),
            ok("GET", "http://docker/v1.41/containers/json"),
            no("POST", "/v1.41/containers/{id}/stop"),
            no("POST", "/containers/{id}/stop"),
            no("POST", "/v1.41/containers/{id}/restart"),
            no("POST", "/v1.41/containers/{id}/start"),
            no("DELETE", "/v1.41/containers/{id}?force=1"),
            no("POST", "/v1.41/images/prune"),
            no("POST", "/v1.41/containers/{id}/stop?x=/json"),
        ],
    )
    .await;
    check(&proxy, &p, &prefix, REFUSED_BY_BOTH).await;

    // Nothing happened to it, and nothing was created.
    untouched(&direct, &p, &before, &prefix).await;
    // Each refusal is in the proxy's log.
    let log = proxy.log();
    assert!(log.contains("/containers/create"), "{log}");
}

/// The responder's proxy: the responder's own Docker calls pass (restart, stop, start, its
/// event and listing reads, remove, image prune); everything else is refused and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_write_lets_through_only_the_responders_calls() {
    init_logs();
    let Some(direct) = docker().await else { return };
    let prefix = format!("hsproxy-{}", random_id());
    let proxy = Proxy::start(&prefix, "docker-write").ready().await;
    let p = Patient::start(&direct, &prefix, "acted", unwatched()).await;
    let docker = proxy.client().await;
    docker.info().await.expect("info");

    // Restart, stop and start, with the responder's code.
    let first = docker_ops::inspect(&docker, &p.id).await.expect("inspect");
    docker_ops::restart(&docker, &p.id, Duration::from_secs(1))
        .await
        .expect("restart through docker-write");
    let restarted = docker_ops::inspect(&docker, &p.id).await.unwrap();
    assert_eq!(status(&restarted), "running");
    assert!(started_at(&restarted) > started_at(&first));
    docker_ops::stop(&docker, &p.id, Duration::from_secs(1))
        .await
        .expect("stop through docker-write");
    let stopped = docker_ops::inspect(&docker, &p.id).await.unwrap();
    assert_eq!(status(&stopped), "exited");
    // Docker's history, read through the proxy: a stop since the last start.
    assert!(docker_ops::stopped_by_a_person(&docker, &stopped).await);
    let since_ms = (started_at(&first).timestamp_millis() as u64).saturating_sub(1000);
    let actions = docker_ops::events_since(&docker, &p.id, since_ms).await;
    assert!(actions.iter().any(|a| a == "stop"), "{actions:?}");
    docker_ops::start(&docker, &p.id)
        .await
        .expect("start through docker-write");
    assert_eq!(
        status(&docker_ops::inspect(&docker, &p.id).await.unwrap()),
        "running"
    );
    let _ = docker_ops::dependents(&docker, &p.id, &p.name).await;
    docker_ops::exited_containers(&docker)
        .await
        .expect("cleanup's listing");

    // Cleanup's writes: remove an exited container, prune images (a filter that matches none,
    // so this test deletes no one's image).
    let gone = Patient::start(&direct, &prefix, "removed", unwatched()).await;
    docker_ops::stop(&docker, &gone.id, Duration::from_secs(1))
        .await
        .unwrap();
    docker
        .remove_container(
            &gone.id,
            Some(
                RemoveContainerOptionsBuilder::new()
                    .v(false)
                    .force(false)
                    .build(),
            ),
        )
        .await
        .expect("remove through docker-write");
    assert_no_container(&direct, &prefix, "removed").await;
    let mut none = HashMap::new();
    let label = format!("hemostat.test.none={prefix}");
    none.insert("label", vec![label.as_str()]);
    docker
        .prune_images(Some(
            PruneImagesOptionsBuilder::new().filters(&none).build(),
        ))
        .await
        .expect("image prune through docker-write");
    assert!(
        proxy.refused().is_empty(),
        "a responder call was refused:\n{}",
        proxy.log()
    );

    // What the responder never does, through its own client: refused.
    let before = direct
        .inspect_container(&p.id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_refused(create(&docker, &prefix).await, "docker-write");
    assert_refused(exec(&docker, &p.id).await, "docker-write");
    assert_refused(
        docker
            .kill_container(&p.id, None::<KillContainerOptions>)
            .await,
        "docker-write",
    );

    check(
        &proxy,
        &p,
        &prefix,
        &[
            ok("GET", "/_ping"),
            ok("GET", "/v1.41/version"),
            ok("GET", "/v1.41/info"),
            ok("GET", "/v1.41/containers/json?all=1"),
            ok("GET", "/v1.41/containers/{id}/json"),
            ok("GET", "/v1.41/events?since={since}&until={until}"),
            ok(
                "POST",
                "/v1.41/images/prune?filters=%7B%22label%22%3A%5B%22hemostat.test.none%3D{prefix}%22%5D%7D",
            ),
            // Reads only the monitor makes.
            no("GET", "/v1.41/containers/{id}/logs?stdout=1"),
            no("GET", "/v1.41/containers/{id}/stats?stream=false"),
            no("GET", "/v1.41/images/json"),
            // Start with a body: an old API version would take a new HostConfig from it.
            no_with(
                "POST",
                "/v1.21/containers/{id}/start",
                &[],
                Some(r#"{"Privileged":true,"Binds":["/:/host"]}"#),
            ),
            no_with(
                "POST",
                "/v1.21/containers/{id}/start",
                &["Transfer-Encoding: chunked"],
                Some("2\r\n{}\r\n0\r\n\r\n"),
            ),
            no_with(
                "POST",
                "/v1.41/containers/{id}/restart",
                &["Upgrade: tcp", "Connection: Upgrade"],
                None,
            ),
            no("POST", "/v1.41/containers/{id}/%73top"),
            no("DELETE", "/v1.41/containers/{id}/json"),
        ],
    )
    .await;
    check(&proxy, &p, &prefix, REFUSED_BY_BOTH).await;

    let after = untouched(&direct, &p, &before, &prefix).await;
    assert!(
        after.host_config.and_then(|h| h.privileged) != Some(true),
        "privileged after a refused start"
    );
}

/// Every request on a kept-alive connection is checked, not only the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_on_a_kept_alive_connection_is_checked() {
    init_logs();
    let Some(direct) = docker().await else { return };
    let prefix = format!("hsproxy-{}", random_id());
    let read = Proxy::start(&prefix, "docker-read").ready().await;
    let write = Proxy::start(&prefix, "docker-write").ready().await;
    let p = Patient::start(&direct, &prefix, "target", unwatched()).await;
    let before = direct
        .inspect_container(&p.id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    for (proxy, second) in [
        (&read, format!("POST /v1.41/containers/{}/stop", p.id)),
        (&write, "POST /v1.41/containers/create".to_owned()),
        (&write, format!("POST /v1.41/containers/{}/exec", p.id)),
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .unwrap();
        s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
            .await
            .unwrap();
        let mut first = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&first).ends_with("\r\n\r\nOK") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the first answer in time")
                .unwrap();
            assert!(n > 0, "{} closed the kept-alive connection", proxy.name);
            first.extend_from_slice(&buf[..n]);
        }
        assert_eq!(status_of(&String::from_utf8_lossy(&first)), 200);
        s.write_all(
            format!("{second} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("the second answer in time")
            .unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert_eq!(status_of(&rest), 403, "{}: {second}: {rest}", proxy.name);
    }
    untouched(&direct, &p, &before, &prefix).await;
}

/// The whole pipeline as compose wires it: the monitor through docker-read, the responder
/// through docker-write, the analyzer with no Docker at all. A killed container is detected (the event stream flows
/// through the proxy), analysed and restarted, and neither proxy refused anything on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_heal_a_container_through_the_proxies_with_nothing_refused() {
    init_logs();
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let Some(direct) = docker().await else { return };
    if !engine_to_ourselves() {
        return;
    }
    let prefix = format!("hsproxy-{}", random_id());
    let read = Proxy::start(&prefix, "docker-read").ready().await;
    let write = Proxy::start(&prefix, "docker-write").ready().await;
    let scope = format!("hemostat.test={prefix}");
    let (read_host, write_host) = (read.host(), write.host());
    let monitor = RunningMonitor::start(
        &redis.url(),
        &[
            "--docker-host",
            &read_host,
            "--scope-label",
            &scope,
            "--docker-df-interval",
            "1s",
        ],
    )
    .await;
    let _analyzer = RunningAnalyzer::start(&redis.url(), &[]).await;
    let _responder = RunningResponder::start(
        &redis.url(),
        &["--docker-host", &write_host, "--scope-label", &scope],
    )
    .await;
    let mut results = StreamReader::new(&redis, Channel::RemediationComplete);
    let p = Patient::start(&direct, &prefix, "victim", PatientSpec::watched(&["run"])).await;
    // A few stats rounds and a disk-use round of the monitor, through the proxy.
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.cli(&["kill"]);
    let e = results
        .wait_for(WAIT, "the victim restarted", |e| {
            result_of(e).is_some_and(|r| {
                r.container.as_ref().is_some_and(|c| c.name == p.name)
                    && r.outcome == Outcome::Success
            })
        })
        .await;
    let r = result_of(&e).unwrap();
    assert!(r.verification.is_some(), "{r:?}");
    let now = direct
        .inspect_container(&p.id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(status(&now), "running");
    assert!(monitor.stop().await);
    for proxy in [&read, &write] {
        assert!(
            proxy.refused().is_empty(),
            "{} refused an agent's call:\n{}",
            proxy.name,
            proxy.log()
        );
    }
}

/// docker-compose.yml runs the proxies as these tests do, and nothing else reaches the socket.
#[test]
fn compose_gives_the_socket_only_to_the_proxies_and_each_agent_its_proxy() {
    let compose = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    let services = services(&compose);
    for name in [
        "redis",
        "monitor",
        "analyzer",
        "responder",
        "alert",
        "dashboard",
        "docker-read",
        "docker-write",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let socket = "- /var/run/docker.sock:/var/run/docker.sock\n";
    for (name, block) in &services {
        let proxy = name == "docker-read" || name == "docker-write";
        assert_eq!(
            block.contains(socket),
            proxy,
            "{name}: only the proxies mount the socket"
        );
        assert!(
            !block.contains("docker.sock:ro"),
            "{name}: `:ro` restricts nothing"
        );
        let want = match name.as_str() {
            "monitor" => Some("docker-read"),
            "responder" => Some("docker-write"),
            _ => None,
        };
        match want {
            Some(p) => {
                assert!(
                    block.contains(&format!("DOCKER_HOST: tcp://{p}:2375\n")),
                    "{name}: DOCKER_HOST"
                );
                assert!(
                    block.contains(&format!("networks: [default, {p}]\n")),
                    "{name}: the network of {p}"
                );
            }
            None => {
                assert!(!block.contains("DOCKER_HOST"), "{name}: DOCKER_HOST");
                if !proxy {
                    assert!(
                        !block.contains("docker-read") && !block.contains("docker-write"),
                        "{name}: on a proxy's network"
                    );
                }
            }
        }
        if proxy {
            let inside = format!("/usr/local/etc/haproxy/{name}.cfg");
            assert!(
                block.contains(&format!("- ./docker/docker-proxy/{name}.cfg:{inside}:ro\n")),
                "{name}: its configuration"
            );
            assert!(
                block.contains(&format!("command: [\"-f\", \"{inside}\"]\n")),
                "{name}: its command"
            );
            assert!(
                block.contains(&format!("networks: [{name}]\n")),
                "{name}: its network only"
            );
            assert!(!block.contains("ports:"), "{name} publishes a port");
        }
    }
    // The flags these tests run the proxies with (docker-write inherits docker-read's).
    let read = &services["docker-read"];
    for line in [
        "user: \"0:0\"",
        "cap_drop: [ALL]",
        "security_opt: [\"no-new-privileges:true\"]",
        "read_only: true",
        "image: ${DOCKER_PROXY_IMAGE:-haproxy:2.8-alpine}",
    ] {
        assert!(read.contains(line), "docker-read: {line}");
    }
    assert!(services["docker-write"].contains("<<: *docker-proxy"));
    for net in ["docker-read", "docker-write"] {
        assert!(
            compose.contains(&format!("\n  {net}:\n    internal: true\n")),
            "network {net} is not internal"
        );
    }
}

/// The services of a compose file, each with the text of its block (comments dropped).
fn services(compose: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut inside = false;
    for line in compose.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            inside = line == "services:";
            out.extend(current.take());
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            out.extend(current.take());
            current = Some((name.to_owned(), String::new()));
        } else if let Some((_, block)) = current.as_mut() {
            block.push_str(line.trim());
            block.push('\n');
        }
    }
    out.extend(current);
    out
}

/// Asserts `r` is the proxy's refusal: a 403 naming the proxy.
fn assert_refused<T: std::fmt::Debug>(r: Result<T, bollard::errors::Error>, proxy: &str) {
    match r {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 403,
            message,
        }) if message.contains(&format!("refused by the {proxy} proxy")) => {}
        other => panic!("expected {proxy}'s 403, got {other:?}"),
    }
}

async fn create(
    docker: &Docker,
    prefix: &str,
) -> Result<bollard::models::ContainerCreateResponse, bollard::errors::Error> {
    docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&format!("{prefix}-created"))
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(hemostat_tests::PATIENT_IMAGE.into()),
                labels: Some(HashMap::from([("hemostat.test".into(), prefix.into())])),
                ..ContainerCreateBody::default()
            },
        )
        .await
}

async fn exec(
    docker: &Docker,
    id: &str,
) -> Result<bollard::exec::CreateExecResults, bollard::errors::Error> {
    docker
        .create_exec(
            id,
            ExecConfig {
                cmd: Some(vec!["/patient".into(), "probe".into()]),
                ..ExecConfig::default()
            },
        )
        .await
}

/// `p` as refused requests must leave it: still running, never restarted or renamed, no exec
/// run in it, and no container created beside it. Returns the fresh look, for more checks.
async fn untouched(
    direct: &Docker,
    p: &Patient,
    before: &ContainerInspectResponse,
    prefix: &str,
) -> ContainerInspectResponse {
    let after = direct
        .inspect_container(&p.id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(status(&after), "running");
    assert_eq!(started_at(&after), started_at(before));
    assert_eq!(after.name, before.name);
    assert!(
        after.exec_ids.clone().unwrap_or_default().is_empty(),
        "an exec ran"
    );
    assert_no_container(direct, prefix, "created").await;
    after
}

async fn assert_no_container(direct: &Docker, prefix: &str, suffix: &str) {
    let name = format!("{prefix}-{suffix}");
    let found = direct
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await;
    if found.is_ok() {
        let _ = Command::new("docker").args(["rm", "-f", &name]).status();
        panic!("container {name} exists");
    }
}

/// A patient without `hemostat.enable`: outside hemostat's scope, so a hemostat responder
/// elsewhere on this engine leaves it alone while the test acts on it.
fn unwatched() -> PatientSpec {
    PatientSpec {
        args: vec!["run".into()],
        ..PatientSpec::default()
    }
}
