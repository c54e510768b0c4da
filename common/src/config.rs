//! Settings every agent shares, read from flags and environment (and `.env`), and the start-up
//! error path: a bad value stops the agent with a message that names the variable and says what
//! would be valid.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Parser, ValueEnum};

use crate::redact;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for compose and log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// The flags every agent has. Each agent flattens this into its own `#[derive(Parser)]`.
/// `Debug` redacts the Redis password.
#[derive(Clone, Args)]
pub struct CommonArgs {
    /// Redis to talk to. `redis://[:password@]host:port[/db]`, or `rediss://` for TLS.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Redis Sentinels to learn the master from: comma-separated `host:port` list. Empty: no
    /// Sentinel, `REDIS_URL` is the server. When set, `REDIS_URL` supplies only the user,
    /// password and database; its host and port are ignored.
    #[arg(long, env = "REDIS_SENTINELS", default_value = "")]
    pub redis_sentinels: String,

    /// The master's name in the sentinels' `sentinel monitor` line.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "hemostat")]
    pub redis_sentinel_master: String,

    /// The sentinels' own password (`requirepass` in sentinel.conf), if they have one.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD")]
    pub redis_sentinel_password: Option<String>,

    /// Name of this Docker host on the bus. Default: the Docker engine's name (`docker info`).
    #[arg(long, env = "HEMOSTAT_HOST_ID")]
    pub host_id: Option<String>,

    /// Log output: `json` or `pretty`. Filtering is `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Where `/healthz` and `/metrics` are served. Default: all addresses, on a port of each
    /// agent's own (monitor 9311, analyzer 9312, responder 9313, alert 9314, dashboard 9315),
    /// so agents run side by side on one machine, and beside Prometheus's own 9090.
    #[arg(long, env = "HEMOSTAT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Approximate maximum length of each `hemostat:stream:*` stream (MAXLEN ~): the bound on
    /// a burst. Streams are also trimmed by age (below).
    #[arg(long, env = "HEMOSTAT_STREAM_MAXLEN", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub stream_maxlen: u64,

    /// How long stream entries are kept (alerts, verdicts, results, the audit, dead letters).
    #[arg(long, env = "HEMOSTAT_STREAM_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub stream_retention: Duration,

    /// How long the high-volume streams keep their entries: `hemostat:stream:metrics` (one
    /// entry per stats round, a few hundred bytes per container) and heartbeats.
    #[arg(long, env = "HEMOSTAT_METRICS_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub metrics_retention: Duration,

    /// How often each agent announces itself on `hemostat:heartbeat` (e.g. `10s`).
    #[arg(long, env = "HEMOSTAT_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long shutdown waits for in-flight work before giving up (e.g. `10s`).
    #[arg(long, env = "HEMOSTAT_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl std::fmt::Debug for CommonArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonArgs")
            .field("redis_url", &redact::url(&self.redis_url))
            .field("redis_sentinels", &self.redis_sentinels)
            .field("redis_sentinel_master", &self.redis_sentinel_master)
            .field(
                "redis_sentinel_password",
                &self.redis_sentinel_password.as_ref().map(|_| "***"),
            )
            .field("host_id", &self.host_id)
            .field("log_format", &self.log_format)
            .field("listen", &self.listen)
            .field("stream_maxlen", &self.stream_maxlen)
            .field("stream_retention", &self.stream_retention)
            .field("metrics_retention", &self.metrics_retention)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl CommonArgs {
    /// Checks what clap cannot: that the Redis URL is one the client accepts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (variable, d, min) in [
            (
                "HEMOSTAT_STREAM_RETENTION",
                self.stream_retention,
                Duration::from_secs(600),
            ),
            (
                "HEMOSTAT_METRICS_RETENTION",
                self.metrics_retention,
                Duration::from_secs(60),
            ),
        ] {
            if d < min {
                return Err(ConfigError {
                    variable,
                    message: format!("{d:?} is too short; expected at least {min:?}"),
                });
            }
        }
        redis::Client::open(self.redis_url.as_str()).map_err(|e| ConfigError {
            variable: "REDIS_URL",
            message: format!(
                "{} is not a usable Redis URL ({e}); expected redis://[:password@]host:port[/db] \
                 or rediss://...",
                redact::url(&self.redis_url)
            ),
        })?;
        crate::sentinel::parse_addrs(&self.redis_sentinels).map_err(|why| ConfigError {
            variable: "REDIS_SENTINELS",
            message: format!(
                "{why}; expected a comma-separated list of host:port, e.g. \
                 sentinel-1:26379,sentinel-2:26379, or empty for no Sentinel"
            ),
        })?;
        if !self.redis_sentinels.trim().is_empty() && self.redis_sentinel_master.trim().is_empty() {
            return Err(ConfigError {
                variable: "REDIS_SENTINEL_MASTER",
                message: "is empty; expected the master name the sentinels monitor".into(),
            });
        }
        if let Some(host) = self.host_id()
            && (host.len() > 253 || host.contains(char::is_whitespace))
        {
            return Err(ConfigError {
                variable: "HEMOSTAT_HOST_ID",
                message: format!(
                    "{host:?} is not a usable host id; expected a non-empty name without spaces"
                ),
            });
        }
        Ok(())
    }

    /// The configured host id; empty counts as unset (compose passes `HEMOSTAT_HOST_ID=` when
    /// the user did not set one).
    pub fn host_id(&self) -> Option<&str> {
        self.host_id
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
    }

    /// Where Redis is: `REDIS_URL` itself, or the master the sentinels name.
    pub fn redis_target(&self) -> crate::bus::RedisTarget {
        let addrs = crate::sentinel::parse_addrs(&self.redis_sentinels).unwrap_or_default();
        crate::bus::RedisTarget {
            url: self.redis_url.clone(),
            sentinels: (!addrs.is_empty()).then(|| crate::sentinel::Sentinels {
                addrs,
                master: self.redis_sentinel_master.trim().to_owned(),
                password: self
                    .redis_sentinel_password
                    .clone()
                    .filter(|p| !p.is_empty()),
            }),
        }
    }

    /// How long each stream keeps its entries.
    /// Where `agent` serves `/healthz` and `/metrics`: `HEMOSTAT_LISTEN`, else its own port.
    pub fn listen_for(&self, agent: &str) -> SocketAddr {
        self.listen.unwrap_or_else(|| default_listen(agent))
    }

    pub fn retention(&self) -> crate::bus::Retention {
        crate::bus::Retention {
            default: self.stream_retention,
            samples: self.metrics_retention,
        }
    }

    /// The settings as a log-safe summary (passwords redacted).
    pub fn summary(&self) -> String {
        format!(
            "redis={}{} host_id={} listen={} stream_maxlen={} stream_retention={:?} metrics_retention={:?} heartbeat={:?}",
            redact::url(&self.redis_url),
            if self.redis_sentinels.trim().is_empty() {
                String::new()
            } else {
                format!(
                    " sentinels={} sentinel_master={}",
                    self.redis_sentinels.trim(),
                    self.redis_sentinel_master
                )
            },
            self.host_id().unwrap_or("<from docker>"),
            self.listen
                .map_or_else(|| "<the agent's own port>".to_owned(), |a| a.to_string()),
            self.stream_maxlen,
            self.stream_retention,
            self.metrics_retention,
            self.heartbeat_interval
        )
    }
}

/// A setting that is present but wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid {variable}: {message}")]
pub struct ConfigError {
    /// The environment variable (the flag has the same meaning).
    pub variable: &'static str,
    pub message: String,
}

/// Parses `10`, `10s`, `500ms`, `5m`, `1h` into a duration. A bare number is seconds.
/// Each agent's own default port for `/healthz` and `/metrics`: distinct, so two agents
/// started by hand on one machine do not clash, and clear of Prometheus's 9090 and the
/// exporters' 9100-9110.
pub fn default_port(agent: &str) -> u16 {
    match agent {
        "monitor" => 9311,
        "analyzer" => 9312,
        "responder" => 9313,
        "alert" => 9314,
        "dashboard" => 9315,
        _ => 9319,
    }
}

/// `0.0.0.0:<default_port(agent)>`.
pub fn default_listen(agent: &str) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], default_port(agent)))
}

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("{raw:?} is not a duration; expected e.g. 10s, 500ms, 5m, 1h or 7d")
    })?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {raw:?}; expected ms, s, m, h or d"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=30.0 * 86_400.0).contains(&secs) {
        return Err(format!("{raw:?} is out of range; expected 0 to 30 days"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a percentage in (0, 100].
pub fn parse_percent(raw: &str) -> Result<f64, String> {
    let v: f64 = raw
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{raw:?} is not a number; expected a percentage in (0, 100]"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!(
            "{raw:?} is out of range; expected a percentage in (0, 100]"
        ));
    }
    Ok(v)
}

/// Loads `.env` (if present), then parses flags and environment into `T`.
///
/// On a bad value the error names the environment variable as well as the flag, because
/// in compose nobody types flags: `invalid HEMOSTAT_STATS_INTERVAL (--stats-interval): ...`.
pub fn parse<T: Parser>() -> Result<T, clap::Error> {
    // A missing .env is normal; a malformed one is worth a warning but not a refusal.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("warning: ignoring .env: {e}");
    }
    parse_from::<T, _, _>(std::env::args_os())
}

/// [`parse`] without `.env`, from explicit arguments (tests).
pub fn parse_from<T, I, S>(args: I) -> Result<T, clap::Error>
where
    T: Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let mut cmd = T::command();
    let matches = cmd
        .try_get_matches_from_mut(args)
        .map_err(|e| name_the_variable(&cmd, e))?;
    T::from_arg_matches(&matches).map_err(|e| name_the_variable(&cmd, e))
}

/// Rewrites clap's error so that it names the environment variable behind the flag.
fn name_the_variable(cmd: &clap::Command, err: clap::Error) -> clap::Error {
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    // `arg` looks like `--stats-interval <DURATION>`.
    let long = arg
        .trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or_default();
    let Some(env) = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
    else {
        return err;
    };
    let detail = err.to_string();
    // Keep clap's explanation (including "possible values"), drop its usage footer.
    let detail = detail
        .trim_start_matches("error: ")
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    clap::Error::raw(
        err.kind(),
        format!("invalid {} (--{long}): {detail}\n", env.to_string_lossy()),
    )
    .with_cmd(cmd)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, env = "TEST_ONLY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
        interval: Duration,
    }

    #[test]
    fn every_agent_has_a_port_of_its_own_clear_of_prometheus() {
        let agents = ["monitor", "analyzer", "responder", "alert", "dashboard"];
        let ports: std::collections::HashSet<u16> =
            agents.iter().map(|a| default_port(a)).collect();
        assert_eq!(ports.len(), agents.len());
        assert!(!ports.contains(&9090) && ports.iter().all(|p| !(9100..=9110).contains(p)));
        let c = Cli::parse_from(["x", "--listen", "127.0.0.1:7"]);
        assert_eq!(c.common.listen_for("monitor").to_string(), "127.0.0.1:7");
    }

    #[test]
    fn a_taken_port_says_how_to_fix_it() {
        let addr: SocketAddr = "127.0.0.1:9311".parse().unwrap();
        let e = crate::http::bind_error(
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
            addr,
            false,
        )
        .to_string();
        assert!(e.contains("9311") && e.contains("HEMOSTAT_LISTEN"), "{e}");
        assert!(e.contains("this agent's default"), "{e}");
    }

    #[test]
    fn durations() {
        let ok = [
            ("10", 10_000),
            ("10s", 10_000),
            ("500ms", 500),
            ("1.5s", 1_500),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
            ("0", 0),
        ];
        for (raw, ms) in ok {
            assert_eq!(
                parse_duration(raw).unwrap(),
                Duration::from_millis(ms),
                "{raw}"
            );
        }
        for bad in ["", "abc", "10x", "-1s", "1e400", "31d", "40000h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percents() {
        assert_eq!(parse_percent("85").unwrap(), 85.0);
        assert_eq!(parse_percent("85%").unwrap(), 85.0);
        for bad in ["0", "101", "x", "-5", "NaN"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_the_environment_variable() {
        let err = parse_from::<Cli, _, _>(["x", "--interval", "soon"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("TEST_ONLY_INTERVAL"), "{msg}");
        assert!(msg.contains("expected e.g. 10s"), "{msg}");

        let err = parse_from::<Cli, _, _>(["x", "--stream-maxlen", "5"]).unwrap_err();
        assert!(err.to_string().contains("HEMOSTAT_STREAM_MAXLEN"), "{err}");

        let err = parse_from::<Cli, _, _>(["x", "--log-format", "xml"]).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }

    #[test]
    fn redis_url_is_checked_and_redacted() {
        let mut cli = parse_from::<Cli, _, _>(["x"]).unwrap();
        cli.common.validate().unwrap();
        cli.common.redis_url = "http://:secret@nowhere".into();
        let err = cli.common.validate().unwrap_err();
        assert_eq!(err.variable, "REDIS_URL");
        assert!(!err.to_string().contains("secret"), "{err}");
        cli.common.redis_url = "rediss://:secret@redis:6380/0".into();
        cli.common.validate().unwrap();
        assert!(!cli.common.summary().contains("secret"));
        assert!(!format!("{:?}", cli.common).contains("secret"));
    }

    #[test]
    fn sentinels_are_checked_and_their_password_redacted() {
        let mut cli = parse_from::<Cli, _, _>(["x"]).unwrap();
        assert!(cli.common.redis_target().sentinels.is_none());
        for bad in ["sentinel-1", "a:26379,b", "a:port", "a:0"] {
            cli.common.redis_sentinels = bad.into();
            let err = cli.common.validate().unwrap_err();
            assert_eq!(err.variable, "REDIS_SENTINELS", "{bad}");
            assert!(err.to_string().contains("host:port"), "{err}");
        }
        cli.common.redis_sentinels = "a:26379, b:26380".into();
        cli.common.redis_sentinel_password = Some("sentinel-secret".into());
        cli.common.validate().unwrap();
        let target = cli.common.redis_target();
        let sentinels = target.sentinels.as_ref().unwrap();
        assert_eq!(sentinels.addrs, ["a:26379", "b:26380"]);
        assert_eq!(sentinels.master, "hemostat");
        assert!(!format!("{:?}", cli.common).contains("sentinel-secret"));
        assert!(!format!("{target:?}").contains("sentinel-secret"));
        assert!(!cli.common.summary().contains("sentinel-secret"));
    }
}
