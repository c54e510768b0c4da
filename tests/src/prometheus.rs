//! A real Prometheus server (Debian's `prometheus` package) for a test: its own config, data
//! directory and loopback port, scraping the test's agents every second, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct TestPrometheus {
    child: Child,
    pub addr: SocketAddr,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// `prometheus` on `PATH`, else Debian's path.
fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TestPrometheus {
    /// Starts Prometheus scraping `targets` (job name, `/metrics` address) every second and
    /// evaluating `rules` (rule files, copied beside its config). `None` (after a loud message,
    /// or a failure under `CI=true`) when the binary is missing.
    pub async fn start(targets: &[(&str, SocketAddr)], rules: &[&Path]) -> Option<TestPrometheus> {
        let Some(bin) = binary() else {
            crate::require(
                "prometheus (Debian's package)",
                "apt-get install -y prometheus; scripts/test.sh installs it",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut rule_files = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let to = dir.path().join(format!("rules-{i}.yml"));
            std::fs::copy(r, &to).expect("copy a rule file");
            rule_files.push(format!("  - {}\n", to.display()));
        }
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files:\n{}scrape_configs:\n",
            rule_files.concat()
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = TestPrometheus {
            child,
            addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = p.http.get(format!("http://{addr}/-/ready")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not get ready in 30 s: {}",
                std::fs::read_to_string(p._dir.path().join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some(p)
    }

    /// `GET /api/v1/<path>?<query>`; panics unless Prometheus answers `status: success`.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let url = format!("http://{}/api/v1/{path}?{}", self.addr, query.join("&"));
        let body: Value = self
            .http
            .get(&url)
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("prometheus answers JSON");
        assert_eq!(body["status"], "success", "{url}: {body}");
        body["data"].clone()
    }

    /// The instant vector `q` evaluates to now: each series' labels and value.
    pub async fn query(&self, q: &str) -> Vec<(serde_json::Map<String, Value>, f64)> {
        let data = self.api("query", &[("query", q)]).await;
        data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                let v = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                (labels, v)
            })
            .collect()
    }

    /// Polls `q` until `ok` holds for its result (at most `timeout`); returns that result.
    pub async fn wait_for(
        &self,
        q: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&[(serde_json::Map<String, Value>, f64)]) -> bool,
    ) -> Vec<(serde_json::Map<String, Value>, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(q).await;
            if ok(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{q}` still gives {r:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            super::encode("up{job=~\"a.*\"} == 1"),
            "up%7Bjob%3D~%22a.%2A%22%7D%20%3D%3D%201"
        );
    }
}
