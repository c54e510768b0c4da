//! A Redis Sentinel cluster on loopback for tests: a master, one replica and three sentinels,
//! each a real process with a throwaway config in a temp dir, all killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require};

/// The name the sentinels monitor the master under (the product's default).
pub const MASTER_NAME: &str = "hemostat";

/// One process of the cluster and the port it listens on.
struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `Child::kill` is SIGKILL: the process gets no chance to hand anything over.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Master, replica and three sentinels (`quorum 2`, `down-after-milliseconds 1000`).
pub struct SentinelCluster {
    _dir: tempfile::TempDir,
    master: Node,
    replica: Node,
    sentinels: Vec<Node>,
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not start on port {port}");
}

fn redis_server(dir: &Path, name: &str, port: u16, extra: &[String]) -> Node {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("node dir");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    wait_port(port, name);
    Node {
        port,
        child: Some(child),
    }
}

fn sync_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    cmd.query(&mut conn)
}

impl SentinelCluster {
    /// Starts the cluster and waits until the sentinels see the replica and each other, or
    /// returns `None` (after [`require`]) when `redis-server`/`redis-sentinel` are missing.
    pub fn start() -> Option<SentinelCluster> {
        for bin in ["redis-server", "redis-sentinel"] {
            if Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_err()
            {
                require(
                    bin,
                    "not on PATH (Debian packages redis-server, redis-sentinel)",
                );
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let master = redis_server(dir.path(), "master", free_port(), &[]);
        let replica = redis_server(
            dir.path(),
            "replica",
            free_port(),
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        );
        let mut cluster = SentinelCluster {
            _dir: dir,
            master,
            replica,
            sentinels: Vec::new(),
        };
        cluster.wait_until("the replica is in sync", Duration::from_secs(15), |c| {
            sync_query::<String>(
                c.replica.port,
                &redis::cmd("INFO").arg("replication").clone(),
            )
            .is_ok_and(|i| i.contains("master_link_status:up"))
        });
        for i in 0..3 {
            let port = free_port();
            let conf = cluster._dir.path().join(format!("sentinel-{i}.conf"));
            // Sentinel rewrites its config file as it learns: it must be writable.
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = cluster._dir.path().display(),
                    master = cluster.master.port,
                ),
            )
            .expect("sentinel config");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            wait_port(port, "redis-sentinel");
            cluster.sentinels.push(Node {
                port,
                child: Some(child),
            });
        }
        // A failover needs a quorum that knows the replica: wait for the hello messages.
        cluster.wait_until(
            "the sentinels know the replica and each other",
            Duration::from_secs(30),
            |c| {
                c.sentinels.iter().all(|s| {
                    let info: redis::RedisResult<std::collections::HashMap<String, String>> =
                        sync_query(
                            s.port,
                            redis::cmd("SENTINEL").arg("master").arg(MASTER_NAME),
                        );
                    info.is_ok_and(|m| {
                        m.get("num-slaves").map(String::as_str) == Some("1")
                            && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                    })
                })
            },
        );
        Some(cluster)
    }

    fn wait_until(&self, what: &str, timeout: Duration, pred: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !pred(self) {
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `REDIS_SENTINELS` for this cluster.
    pub fn sentinels(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags that put an agent under this cluster's Sentinel.
    pub fn agent_flags(&self) -> Vec<String> {
        vec![
            "--redis-sentinels".into(),
            self.sentinels(),
            "--redis-sentinel-master".into(),
            MASTER_NAME.into(),
        ]
    }

    /// The port the first sentinel that answers names as master.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            sync_query::<Option<(String, u16)>>(
                s.port,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER_NAME),
            )
            .ok()
            .flatten()
            .map(|(_, port)| port)
        })
    }

    /// The URL of the master the sentinels name now.
    pub fn master_url(&self) -> String {
        let port = self.master_port().expect("a sentinel names the master");
        format!("redis://127.0.0.1:{port}")
    }

    /// The port of the server started as master.
    pub fn first_master_port(&self) -> u16 {
        self.master.port
    }

    /// The port of the server started as replica.
    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// SIGKILLs the server started as master.
    pub fn kill_master(&mut self) {
        self.master.kill();
    }

    /// Waits until the sentinels name a master other than `old`; returns its port.
    pub fn wait_for_new_master(&self, old: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.master_port().filter(|p| *p != old) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels promoted no new master within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SentinelCluster {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            s.kill();
        }
        self.replica.kill();
        self.master.kill();
    }
}
