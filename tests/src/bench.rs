//! Pieces shared by the benchmark harnesses in `src/bin/bench-*.rs`: percentiles and their
//! printed rows, the release agent binaries run as child processes, Redis's own baseline
//! (`redis-benchmark`) and counters, and a local webhook sink.
//!
//! Benchmarks are not tests: they print numbers for `docs/BENCHMARKS.md` and never assert
//! timings. Everything they start is theirs and is stopped when they end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::post;
use redis::aio::MultiplexedConnection;

use crate::TestRedis;

/// The `p`th percentile (nearest rank) of an ascending slice; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints one latency row (`name n= p50= p95= p99= max=`, milliseconds, the name padded to
/// `name_width`) and returns its p50.
pub fn latency_row(name: &str, name_width: usize, mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<name_width$} n={:<4} p50={:>7.1} ms  p95={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 95.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    );
    percentile(&v, 50.0)
}

/// The folder of the running harness binary, where `cargo build --release` put the agents.
pub fn release_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("the harness binary has no folder")?
        .to_path_buf())
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Agent(pub Child);

impl Agent {
    /// The child's process id, for `/proc/<pid>` readings.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the release binary `name` from `dir` against `redis`, as host `bench`, listening on
/// a free loopback port, logging warnings only, with `env` on top (the harness's own
/// environment is passed through, so `HEMOSTAT_*` overrides reach the agent).
pub fn agent(
    dir: &Path,
    name: &str,
    redis: &TestRedis,
    env: &[(&str, &str)],
) -> anyhow::Result<Agent> {
    let bin = dir.join(name);
    if !bin.exists() {
        bail!(
            "{} not found: build it with cargo build --release",
            bin.display()
        );
    }
    let mut cmd = Command::new(&bin);
    cmd.env("REDIS_URL", redis.url())
        .env("HEMOSTAT_LISTEN", "127.0.0.1:0")
        .env("HEMOSTAT_HOST_ID", "bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Agent(cmd.spawn().with_context(|| format!("start {name}"))?))
}

/// Whether every `(stream, group)` pair has its consumer group (the agents are consuming).
pub async fn groups_ready(redis: &TestRedis, pairs: &[(&str, &str)]) -> bool {
    let mut conn = redis.conn().await;
    for (stream, group) in pairs {
        let r: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(*stream)
            .query_async(&mut conn)
            .await;
        if !r.is_ok_and(|g| g.groups.iter().any(|g| g.name == *group)) {
            return false;
        }
    }
    true
}

/// utime + stime of a process, in clock ticks (see [`clock_ticks`]).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which is in parentheses and may contain spaces).
    let rest = &s[s.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15.
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(f.get(i).context("short /proc stat line")?.parse::<u64>()?)
    };
    Ok(field(11)? + field(12)?)
}

/// A `Vm*` line of /proc/<pid>/status, in kB.
pub fn status_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} in status"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// One redis-benchmark run: requests per second for `cmd` with 10 clients.
pub fn redis_benchmark(
    redis: &TestRedis,
    n: usize,
    pipeline: usize,
    cmd: &[&str],
) -> anyhow::Result<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args([
            "-c",
            "10",
            "-n",
            &n.to_string(),
            "-P",
            &pipeline.to_string(),
        ])
        .arg("--csv")
        .args(cmd)
        .output()
        .context("run redis-benchmark (Debian's redis-tools)")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // CSV: a header line, then `"<command>","<rps>",` and six latency columns. The command
    // itself holds quotes and commas (the JSON payload), so count columns from the end.
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .nth(1)
        .context("redis-benchmark printed no result")?;
    let cols: Vec<&str> = line.split("\",\"").collect();
    let rps = cols
        .len()
        .checked_sub(7)
        .and_then(|i| cols.get(i))
        .context("redis-benchmark result has no rps column")?
        .trim_matches('"');
    rps.parse()
        .with_context(|| format!("redis-benchmark rps {rps:?}"))
}

/// A string field of a `HGETALL` reply.
pub fn field(map: &HashMap<String, redis::Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Redis's `total_commands_processed`.
pub async fn commands_processed(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .context("INFO stats has no total_commands_processed")?
        .trim()
        .parse()
        .context("total_commands_processed")
}

/// The local webhook sink: counts requests and accepts each with 200.
pub async fn sink(requests: Arc<AtomicU64>) -> anyhow::Result<String> {
    let app = Router::new().route(
        "/hook",
        post(move |_body: String| {
            let requests = requests.clone();
            async move {
                requests.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/hook"))
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
