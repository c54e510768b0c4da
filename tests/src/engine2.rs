//! A second Docker engine on this machine, beside the first, so multi-host tests run against
//! two real engines: its own bridge, data, exec root and socket, and the patient image loaded.
//!
//! It never starts with `--bridge=none`: a daemon started that way deletes the first engine's
//! `docker0`. Its containers run with `--network none` ([`SecondEngine::spec`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;

use crate::{PATIENT_IMAGE, PatientSpec, ensure_patient_image, random_id, require};

/// Every bridge and directory of a second engine starts with this, so a crashed run's
/// leftovers can be found again.
const PREFIX: &str = "hse2";

/// How long the daemon gets to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the daemon gets to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A second `dockerd`, stopped and removed (containers, mounts, bridge, directories) on drop.
pub struct SecondEngine {
    dir: PathBuf,
    bridge: String,
    child: Option<Child>,
    /// Made once the socket exists (bollard checks for it).
    docker: Option<Docker>,
}

impl SecondEngine {
    /// Starts one, or returns `None` (after [`require`]) when it cannot: no `dockerd`, not
    /// root, or the daemon does not answer.
    pub fn start() -> Option<SecondEngine> {
        if Command::new("dockerd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            require("a second docker engine", "dockerd is not on PATH");
            return None;
        }
        clean_leftovers();
        ensure_patient_image();
        match Self::try_start() {
            Ok(e) => Some(e),
            Err(e) => {
                require("a second docker engine", &format!("{e:#}"));
                None
            }
        }
    }

    fn try_start() -> anyhow::Result<SecondEngine> {
        use anyhow::Context as _;
        let id = &random_id()[..6];
        let bridge = format!("{PREFIX}{id}");
        let dir = PathBuf::from(format!("/tmp/{PREFIX}-{id}"));
        std::fs::create_dir_all(dir.join("data")).context("second engine directory")?;
        std::fs::create_dir_all(dir.join("exec")).context("second engine exec root")?;
        // Who owns it, so a later run can tell a crashed run's engine from a live one.
        std::fs::write(dir.join("owner"), std::process::id().to_string())
            .context("second engine owner file")?;
        std::fs::write(dir.join("bridge"), &bridge).context("second engine bridge file")?;
        // The machine's daemon.json sets data-root, which would clash with ours.
        std::fs::write(dir.join("daemon.json"), "{}").context("second engine config file")?;
        // From here on, drop cleans whatever was made.
        let mut engine = SecondEngine {
            docker: None,
            dir,
            bridge,
            child: None,
        };
        let subnet = free_subnet().context("a free private /24 for the second engine")?;
        run("ip", &["link", "add", &engine.bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.{subnet}.1/24"),
                "dev",
                &engine.bridge,
            ],
        )?;
        run("ip", &["link", "set", &engine.bridge, "up"])?;
        let d = &engine.dir;
        let log = std::fs::File::create(d.join("dockerd.log")).context("dockerd log file")?;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--host")
            .arg(format!("unix://{}", d.join("d2.sock").display()))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            // Never `--bridge=none`: see the module comment.
            .arg(format!("--bridge={}", engine.bridge))
            .arg("--iptables=false")
            .arg("--ip-masq=false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dockerd log file")?)
            .stderr(log)
            .spawn()
            .context("spawn dockerd")?;
        engine.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if engine.cli(&["version"]).is_ok() {
                break;
            }
            if let Some(c) = engine.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                anyhow::bail!(
                    "dockerd exited ({status}) before answering: {}",
                    engine.log_tail()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "dockerd did not answer within {START_TIMEOUT:?}: {}",
                    engine.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        engine.docker = Some(
            Docker::connect_with_unix(
                &engine.dir.join("d2.sock").display().to_string(),
                30,
                bollard::API_DEFAULT_VERSION,
            )
            .context("second engine client")?,
        );
        let load = format!(
            "docker save {PATIENT_IMAGE} | docker -H {} load",
            engine.docker_host()
        );
        let out = Command::new("sh")
            .args(["-c", &load])
            .output()
            .context("load the patient image into the second engine")?;
        anyhow::ensure!(
            out.status.success(),
            "loading the patient image into the second engine failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(engine)
    }

    /// The `unix://` URL of its socket, for `--docker-host` or `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.dir.join("d2.sock").display())
    }

    /// A client for it, at the API version it speaks.
    pub async fn docker(&self) -> Docker {
        self.docker
            .clone()
            .expect("a started engine has a client")
            .negotiate_version()
            .await
            .expect("the second engine's API version")
    }

    /// `spec` made to run on this engine: no network (it has no iptables rules of its own).
    pub fn spec(spec: PatientSpec) -> PatientSpec {
        PatientSpec {
            network_mode: Some("none".into()),
            ..spec
        }
    }

    /// Runs `docker -H <this engine> args...` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("timeout")
            .arg("20")
            .arg("docker")
            .arg("-H")
            .arg(self.docker_host())
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "docker -H {} {args:?}: {}",
            self.docker_host(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Every container on this engine is one the test made.
            if let Ok(ids) = self.cli(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(ids);
                    let _ = self.cli(&args);
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            stop_daemon(c.id() as i32);
            let _ = c.wait();
        }
        remove(&self.dir, Some(&self.bridge));
    }
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .split_whitespace()
            .nth(2)
            .is_none_or(|state| state != "Z")
}

/// SIGTERM, a bounded wait, then SIGKILL.
fn stop_daemon(pid: i32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Unmounts whatever is left under `dir` (deepest first), then deletes it and the bridge.
fn remove(dir: &Path, bridge: Option<&str>) {
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .args(["-l", p])
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(dir);
    if let Some(b) = bridge {
        let _ = Command::new("ip")
            .args(["link", "delete", b])
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes what a crashed earlier run left: engines whose owning test process is gone, and
/// bridges with our prefix that no live engine uses. Engines of tests still running (in
/// another worktree, say) are left alone.
fn clean_leftovers() {
    let mut live_bridges = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/tmp") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{PREFIX}-")) {
                continue;
            }
            let dir = e.path();
            let bridge = std::fs::read_to_string(dir.join("bridge")).ok();
            let owner = std::fs::read_to_string(dir.join("owner"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if owner.is_some_and(alive) {
                live_bridges.extend(bridge);
                continue;
            }
            eprintln!("cleaning a second docker engine left by an earlier run: {dir:?}");
            if let Some(pid) = std::fs::read_to_string(dir.join("dockerd.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                && alive(pid)
            {
                stop_daemon(pid);
            }
            remove(&dir, bridge.as_deref());
        }
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for l in links.lines() {
        let Some(name) = l.split(':').nth(1).map(str::trim) else {
            continue;
        };
        if name.starts_with(PREFIX) && !live_bridges.iter().any(|b| b == name) {
            eprintln!("deleting bridge {name} left by an earlier run");
            let _ = Command::new("ip").args(["link", "delete", name]).status();
        }
    }
}

/// The middle two octets `a.b` of a `10.a.b.0/24` that no interface uses.
fn free_subnet() -> anyhow::Result<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr"]).output()?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    for _ in 0..50 {
        let b = 100 + rand::random::<u8>() % 150;
        let candidate = format!("213.{b}");
        if !used.contains(&format!("10.{candidate}.")) {
            return Ok(candidate);
        }
    }
    anyhow::bail!("no free 10.213.x.0/24")
}
