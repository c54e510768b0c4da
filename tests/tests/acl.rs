//! One Redis user per service, with the rules the compose stack gives them
//! (`hemostat_common::acl`): each service may write only what its job needs, and the whole
//! pipeline runs under them without a single refused command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use std::time::{Duration, Instant};

use hemostat_common::acl;
use hemostat_common::agent::AgentContext;
use hemostat_common::events::{Channel, Outcome};
use hemostat_common::shutdown::Shutdown;
use hemostat_tests::openai_stub::RunningAnalyzer;
use hemostat_tests::pipeline::{HOST, RunningResponder, alert, slack_sink};
use hemostat_tests::records::{engine_to_ourselves, result_of};
use hemostat_tests::{
    Patient, PatientSpec, RunningMonitor, StreamReader, TestRedis, docker, ensure_patient_image,
    init_logs, random_id, repo_root,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);

/// Runs one command as `service`; `Ok` or the server's error text.
async fn run_as(redis: &TestRedis, service: &str, args: &[&str]) -> Result<(), String> {
    let client = redis::Client::open(redis.url_as(service)).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<redis::Value>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether Redis's error says the ACL refused it (as a command, or inside a script).
fn refused(e: &str) -> bool {
    let e = e.to_lowercase();
    e.contains("noperm") || e.contains("no permissions") || e.contains("can't access")
}

/// What `ACL LOG` holds: every command Redis refused since it started.
async fn refusals(redis: &TestRedis) -> Vec<String> {
    let mut conn = redis.conn().await;
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut conn)
        .await
        .unwrap();
    log.iter().map(|v| format!("{v:?}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_may_write_only_what_its_job_needs() {
    init_logs();
    let Some(redis) = TestRedis::start_with_acl() else {
        return;
    };
    let entry = ["*", "event_type", "x", "envelope", "{}"];
    let xadd = |stream: &'static str| {
        let mut v = vec!["XADD", stream];
        v.extend(entry);
        v
    };
    // (service, command, allowed)
    let cases: Vec<(&str, Vec<&str>, bool)> = vec![
        // A person's request comes only from the dashboard; a decision on a proposal too; only
        // the responder proposes; windows come from the dashboard and the alert CLI.
        ("dashboard", xadd("hemostat:stream:person_request"), true),
        ("analyzer", xadd("hemostat:stream:person_request"), false),
        ("alert", xadd("hemostat:stream:person_request"), false),
        (
            "dashboard",
            vec!["PUBLISH", "hemostat:person_request", "{}"],
            true,
        ),
        (
            "dashboard",
            vec!["SET", "hemostat:decision:h:01J", "approved:x", "NX"],
            true,
        ),
        (
            "responder",
            vec!["SET", "hemostat:decision:h:01J", "approved:x"],
            false,
        ),
        (
            "analyzer",
            vec!["SET", "hemostat:decision:h:01J", "approved:x"],
            false,
        ),
        (
            "dashboard",
            vec!["HSET", "hemostat:proposal:h:01J", "expires_ms", "1"],
            false,
        ),
        (
            "responder",
            vec!["HSET", "hemostat:proposal:h:01J", "expires_ms", "1"],
            true,
        ),
        (
            "dashboard",
            vec!["SET", "hemostat:approval_key", "k"],
            false,
        ),
        (
            "responder",
            vec!["SET", "hemostat:approval_key", "k", "NX"],
            true,
        ),
        (
            "dashboard",
            vec!["HSET", "hemostat:maintenance", "w", "{}"],
            true,
        ),
        (
            "alert",
            vec!["HSET", "hemostat:maintenance", "w", "{}"],
            true,
        ),
        (
            "responder",
            vec!["HSET", "hemostat:maintenance", "w", "{}"],
            false,
        ),
        (
            "monitor",
            vec!["HSET", "hemostat:maintenance", "w", "{}"],
            false,
        ),
        // Only the analyzer asks for a remediation, on the stream or on the channel.
        (
            "dashboard",
            xadd("hemostat:stream:remediation_needed"),
            false,
        ),
        ("monitor", xadd("hemostat:stream:remediation_needed"), false),
        (
            "responder",
            xadd("hemostat:stream:remediation_needed"),
            false,
        ),
        ("alert", xadd("hemostat:stream:remediation_needed"), false),
        ("analyzer", xadd("hemostat:stream:remediation_needed"), true),
        (
            "dashboard",
            vec!["PUBLISH", "hemostat:remediation_needed", "{}"],
            false,
        ),
        (
            "analyzer",
            vec!["PUBLISH", "hemostat:remediation_needed", "{}"],
            true,
        ),
        // Only the monitor reports health; the analyzer consumes it but cannot add to it.
        ("analyzer", xadd("hemostat:stream:health_alert"), false),
        ("monitor", xadd("hemostat:stream:health_alert"), true),
        (
            "analyzer",
            vec![
                "XGROUP",
                "CREATE",
                "hemostat:stream:health_alert",
                "analyzer",
                "$",
                "MKSTREAM",
            ],
            true,
        ),
        (
            "analyzer",
            vec!["XACK", "hemostat:stream:health_alert", "analyzer", "0-1"],
            true,
        ),
        (
            "analyzer",
            vec!["XDEL", "hemostat:stream:health_alert", "0-1"],
            false,
        ),
        (
            "analyzer",
            vec!["XTRIM", "hemostat:stream:health_alert", "MAXLEN", "0"],
            false,
        ),
        // Only the responder writes results, locks, breakers and queues.
        (
            "responder",
            xadd("hemostat:stream:remediation_complete"),
            true,
        ),
        (
            "analyzer",
            xadd("hemostat:stream:remediation_complete"),
            false,
        ),
        (
            "dashboard",
            xadd("hemostat:stream:remediation_complete"),
            false,
        ),
        ("responder", vec!["SET", "hemostat:lock:h:c", "me"], true),
        ("dashboard", vec!["SET", "hemostat:lock:h:c", "me"], false),
        // Asking a host: the dashboard adds a request and waits for its reply; only the
        // monitor reads the requests (as a group) and writes replies.
        ("dashboard", xadd("hemostat:ask:h"), true),
        (
            "dashboard",
            vec!["BLPOP", "hemostat:reply:r1", "0.01"],
            true,
        ),
        ("dashboard", vec!["RPUSH", "hemostat:reply:r1", "{}"], false),
        ("dashboard", vec!["DEL", "hemostat:ask:h"], false),
        (
            "dashboard",
            vec!["XTRIM", "hemostat:ask:h", "MAXLEN", "0"],
            false,
        ),
        ("analyzer", xadd("hemostat:ask:h"), false),
        ("responder", vec!["RPUSH", "hemostat:reply:r1", "{}"], false),
        ("monitor", vec!["RPUSH", "hemostat:reply:r1", "{}"], true),
        (
            "monitor",
            vec!["PEXPIRE", "hemostat:reply:r1", "5000"],
            true,
        ),
        // `hemostat-monitor ask` runs with the monitor's credentials.
        ("monitor", xadd("hemostat:ask:h"), true),
        ("monitor", vec!["XDEL", "hemostat:ask:h", "0-1"], false),
        (
            "monitor",
            vec![
                "XGROUP",
                "CREATE",
                "hemostat:ask:h",
                "monitor",
                "0",
                "MKSTREAM",
            ],
            true,
        ),
        (
            "monitor",
            vec![
                "XREADGROUP",
                "GROUP",
                "monitor",
                "monitor",
                "STREAMS",
                "hemostat:ask:h",
                ">",
            ],
            true,
        ),
        (
            "monitor",
            vec!["XACK", "hemostat:ask:h", "monitor", "0-1"],
            true,
        ),
        ("dashboard", vec!["DEL", "hemostat:lock:h:c"], false),
        ("alert", vec!["SET", "hemostat:breaker:h:c", "open"], false),
        (
            "dashboard",
            vec!["SET", "hemostat:breaker:h:c", "closed"],
            false,
        ),
        (
            "dashboard",
            vec!["ZADD", "hemostat:jobs:h", "1", "x"],
            false,
        ),
        // The dashboard: audit entries, silences, a breaker reset (a delete), reads.
        ("dashboard", xadd("hemostat:stream:audit"), true),
        (
            "dashboard",
            vec!["HSET", "hemostat:silences", "s1", "{}"],
            true,
        ),
        (
            "dashboard",
            vec!["DEL", "hemostat:breaker:h:c", "hemostat:history:h:c"],
            true,
        ),
        (
            "dashboard",
            vec![
                "XREVRANGE",
                "hemostat:stream:remediation_complete",
                "+",
                "-",
                "COUNT",
                "1",
            ],
            true,
        ),
        ("dashboard", vec!["HGETALL", "hemostat:alert:group"], true),
        (
            "dashboard",
            vec!["XTRIM", "hemostat:stream:audit", "MAXLEN", "0"],
            false,
        ),
        (
            "dashboard",
            vec!["HSET", "hemostat:alert:fp:x", "a", "b"],
            false,
        ),
        // The alert agent owns its notification state, nothing of the responder's.
        ("alert", vec!["HSET", "hemostat:alert:fp:x", "a", "b"], true),
        ("alert", xadd("hemostat:stream:notifications"), true),
        ("alert", vec!["DEL", "hemostat:job:h:1"], false),
        // Nobody administers Redis, lists every key or flushes it.
        ("monitor", vec!["FLUSHALL"], false),
        (
            "responder",
            vec!["CONFIG", "SET", "appendonly", "no"],
            false,
        ),
        ("analyzer", vec!["KEYS", "*"], false),
        ("alert", vec!["ACL", "SETUSER", "x", "on"], false),
        ("dashboard", vec!["SHUTDOWN", "NOSAVE"], false),
        (
            "dashboard",
            vec![
                "EVAL",
                "return redis.call('XADD', 'hemostat:stream:remediation_needed', '*', 'a', 'b')",
                "0",
            ],
            false,
        ),
        // Outside hemostat's keys: nothing.
        ("responder", vec!["SET", "someone-elses-key", "1"], false),
        ("monitor", vec!["GET", "someone-elses-key"], false),
        // Every service: its heartbeat and dead letters.
        (
            "dashboard",
            vec!["SET", "hemostat:heartbeat:dashboard:x", "1", "PX", "1000"],
            true,
        ),
        (
            "monitor",
            vec!["SET", "hemostat:heartbeat:responder:x", "1"],
            false,
        ),
        ("alert", xadd("hemostat:stream:dead_letter"), true),
    ];
    let mut wrong = Vec::new();
    for (service, cmd, allowed) in &cases {
        let r = run_as(&redis, service, cmd).await;
        let ok = match &r {
            Ok(()) => true,
            Err(e) if refused(e) => false,
            // Refused for another reason (a wrong type, a bad id): the ACL let it through.
            Err(_) => true,
        };
        if ok != *allowed {
            wrong.push(format!("{service} {cmd:?}: {r:?} (want allowed={allowed})"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // A wrong password is refused, and the admin (default user) keeps every right.
    let bad = redis::Client::open(format!(
        "redis://{}:wrong@127.0.0.1:{}",
        acl::user("analyzer"),
        redis.port()
    ))
    .unwrap();
    assert!(bad.get_multiplexed_async_connection().await.is_err());
    let mut admin = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg("anything")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// The compose stack writes its ACL file with `redis-users`, from the same rules: a redis-server
/// started on that file gives each service exactly the rights above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_builds_its_users_from_the_same_rules() {
    let compose = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    assert!(
        compose.contains(r#""redis-users", "/acl/users.acl""#),
        "the one-shot writer"
    );
    assert!(
        compose.contains(r#""--aclfile", "/acl/users.acl""#),
        "redis reads it"
    );
    for service in acl::SERVICES {
        let var = acl::password_variable(service);
        assert!(
            compose.contains(&format!(
                "REDIS_URL: redis://{}:${{{var}:-",
                acl::user(service)
            )),
            "{service} connects as its own user"
        );
        assert!(
            compose.contains(&format!("{var}: ${{{var}:-")),
            "{var} reaches redis-users"
        );
    }
    // The file the one-shot writes is one redis-server accepts.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.acl");
    let mut passwords = Vec::new();
    for s in acl::SERVICES {
        passwords.push((s, format!("{s}-pw")));
    }
    std::fs::write(&file, acl::acl_file("admin-pw", &passwords)).unwrap();
    // Only to learn whether redis-server is here (fails under CI=true when it is not).
    let Some(_redis) = TestRedis::start() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--aclfile")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server refused the ACL file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = redis::Client::open(format!(
        "redis://hemostat-dashboard:dashboard-pw@127.0.0.1:{port}"
    ))
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let r: redis::RedisResult<String> = redis::cmd("XADD")
        .arg("hemostat:stream:remediation_needed")
        .arg("*")
        .arg("a")
        .arg("b")
        .query_async(&mut conn)
        .await;
    let e = r.unwrap_err().to_string();
    assert!(refused(&e), "{e}");
    let admin = redis::Client::open(format!("redis://:admin-pw@127.0.0.1:{port}")).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(users.len(), 6, "{users:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// The dashboard as its user; returns where it serves.
async fn dashboard(url: &str) -> (SocketAddr, Shutdown, tokio::task::JoinHandle<bool>) {
    let args = [
        "hemostat-dashboard".to_owned(),
        format!("--redis-url={url}"),
        "--listen=127.0.0.1:0".into(),
        "--agent-listen=127.0.0.1:0".into(),
        format!("--host-id={HOST}"),
        "--heartbeat-interval=1s".into(),
        "--shutdown-timeout=3s".into(),
        "--token=".into(),
        "--read-token=".into(),
        "--hosts=".into(),
    ];
    let a: hemostat_dashboard::config::DashboardArgs =
        hemostat_common::config::parse_from(args).unwrap();
    let cfg = a.validate().unwrap();
    let shutdown = Shutdown::new();
    let ctx = AgentContext::start(
        &a.common,
        hemostat_dashboard::AGENT,
        HOST.into(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let addr = hemostat_dashboard::start(cfg, a.common.stream_maxlen, &ctx)
        .await
        .unwrap();
    (addr, shutdown, tokio::spawn(ctx.finish()))
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Monitor, analyzer, responder, alert and dashboard, each as its own user: a killed container
/// is seen, judged, restarted and verified, a person is told, the dashboard shows it, and
/// Redis refused not one command on the way (its `ACL LOG` stays empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_pipeline_runs_under_its_own_users() {
    init_logs();
    let Some(redis) = TestRedis::start_with_acl() else {
        return;
    };
    let Some(docker) = docker().await else {
        return;
    };
    if !engine_to_ourselves() {
        return;
    }
    ensure_patient_image();
    let prefix = format!("hsacl-{}", random_id());
    let scope = format!("hemostat.test={prefix}");
    let (sink_addr, sunk) = slack_sink().await;
    let mut results = StreamReader::new(&redis, Channel::RemediationComplete);

    let monitor = RunningMonitor::start(&redis.url_as("monitor"), &["--scope-label", &scope]).await;
    let analyzer = RunningAnalyzer::start(&redis.url_as("analyzer"), &[]).await;
    let responder =
        RunningResponder::start(&redis.url_as("responder"), &["--scope-label", &scope]).await;
    let (alert_stop, alert_done) = alert(
        &redis.url_as("alert"),
        &format!("http://{sink_addr}/services/T0/B0/acl"),
    )
    .await;
    let (dash, dash_stop, dash_done) = dashboard(&redis.url_as("dashboard")).await;

    let p = Patient::start(&docker, &prefix, "killed", PatientSpec::watched(&["run"])).await;
    p.cli(&["kill"]);
    results
        .wait_for(WAIT, "the killed container healed", |e| {
            result_of(e).is_some_and(|r| {
                r.container.as_ref().is_some_and(|c| c.id == p.id) && r.outcome == Outcome::Success
            })
        })
        .await;

    let deadline = Instant::now() + WAIT;
    while !sunk.lock().unwrap().iter().any(|b| b.contains(&p.name)) {
        assert!(
            Instant::now() < deadline,
            "no notification named {}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let overview = get(dash, "/api/remediations").await;
    assert!(overview.starts_with("HTTP/1.1 200"), "{overview}");
    assert!(overview.contains(&p.name), "{overview}");

    // A heartbeat, a trim and a memory check have run in each agent by now (trims once a
    // minute: the first tick is at start).
    let refused = refusals(&redis).await;
    assert!(
        refused.is_empty(),
        "Redis refused commands:\n{}",
        refused.join("\n")
    );

    assert!(monitor.stop().await, "monitor stopped cleanly");
    assert!(analyzer.stop().await, "analyzer stopped cleanly");
    assert!(responder.stop().await, "responder stopped cleanly");
    alert_stop.cancel();
    assert!(alert_done.await.unwrap_or(false), "alert stopped cleanly");
    dash_stop.cancel();
    assert!(
        dash_done.await.unwrap_or(false),
        "dashboard stopped cleanly"
    );
    let refused = refusals(&redis).await;
    assert!(
        refused.is_empty(),
        "Redis refused commands at shutdown:\n{}",
        refused.join("\n")
    );
}
