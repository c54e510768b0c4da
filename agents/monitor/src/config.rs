//! The monitor's settings: flags and environment, validated once into [`MonitorConfig`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hemostat_common::config::{CommonArgs, ConfigError, parse_duration, parse_percent};
use hemostat_common::scope::{Scope, ScopeArgs};

use crate::detect::DetectConfig;
use crate::judge::{BaselineConfig, Threshold};

/// hemostat monitor: watches Docker containers and the host, and publishes health alerts the
/// moment something fails.
#[derive(Debug, Clone, Parser)]
#[command(name = "hemostat-monitor", version, about)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The Docker API: `unix:///var/run/docker.sock`, `tcp://host:2375`. Default: the local
    /// socket.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// Which containers are watched: `HEMOSTAT_MONITOR_ALL` and `HEMOSTAT_SCOPE_LABEL`.
    #[command(flatten)]
    pub scope: ScopeArgs,

    /// How often container stats are sampled.
    #[arg(long, env = "HEMOSTAT_STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// Most stats requests in flight at once: `auto` (one per running container in scope, up
    /// to 512) or a number from 1 to 512. Docker answers a one-shot request at its stats
    /// collector's next 1 s tick, so a round takes one tick per batch of this many containers.
    #[arg(long, env = "HEMOSTAT_STATS_CONCURRENCY", default_value = "auto",
          value_parser = parse_stats_concurrency)]
    pub stats_concurrency: StatsConcurrency,

    /// CPU % (100 = one core, or the container's CPU limit if it has one) that is a breach.
    /// Per container: label `hemostat.cpu_threshold`.
    #[arg(long, env = "HEMOSTAT_CPU_THRESHOLD", default_value = "85", value_parser = parse_percent)]
    pub cpu_threshold: f64,

    /// CPU % that makes a breach critical.
    #[arg(long, env = "HEMOSTAT_CPU_CRITICAL", default_value = "95", value_parser = parse_percent)]
    pub cpu_critical: f64,

    /// Memory % of the limit that is a breach. Per container: label `hemostat.memory_threshold`.
    #[arg(long, env = "HEMOSTAT_MEMORY_THRESHOLD", default_value = "80", value_parser = parse_percent)]
    pub memory_threshold: f64,

    /// Memory % that makes a breach critical.
    #[arg(long, env = "HEMOSTAT_MEMORY_CRITICAL", default_value = "95", value_parser = parse_percent)]
    pub memory_critical: f64,

    /// Consecutive samples over (or back under) a threshold before it fires (or clears).
    #[arg(long, env = "HEMOSTAT_BREACH_SAMPLES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breach_samples: u32,

    /// Samples a container's learned baseline needs before it judges anything.
    #[arg(long, env = "HEMOSTAT_BASELINE_WARMUP", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub baseline_warmup: u32,

    /// Standard deviations above the baseline that count as an anomaly.
    #[arg(long, env = "HEMOSTAT_BASELINE_Z", default_value_t = 4.0)]
    pub baseline_z: f64,

    /// Percentage points above the baseline an anomaly must also be.
    #[arg(long, env = "HEMOSTAT_BASELINE_MIN_DELTA", default_value = "15", value_parser = parse_percent)]
    pub baseline_min_delta: f64,

    /// How often a problem that persists is reported again.
    #[arg(long, env = "HEMOSTAT_REMINDER_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub reminder_interval: Duration,

    /// How long a `die` after SIGTERM waits for the `stop` event that marks a person's stop.
    #[arg(long, env = "HEMOSTAT_STOP_SETTLE", default_value = "300ms", value_parser = parse_duration)]
    pub stop_settle: Duration,

    /// How long a `stop` waits for the `start` that makes it a restart (`docker restart`,
    /// hemostat's own restarts) rather than a person's stop.
    #[arg(long, env = "HEMOSTAT_RESTART_SETTLE", default_value = "1s", value_parser = parse_duration)]
    pub restart_settle: Duration,

    /// At start-up, a container that died (non-zero exit or OOM kill) at most this long ago
    /// while the monitor was not running is reported, once; older deaths are history. `0`
    /// turns this off.
    #[arg(long, env = "HEMOSTAT_STARTUP_LOOKBACK", default_value = "1h", value_parser = parse_duration)]
    pub startup_lookback: Duration,

    /// How often host CPU, memory and disk are sampled.
    #[arg(long, env = "HEMOSTAT_HOST_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub host_interval: Duration,

    /// Where the host's /proc is visible (`/host/proc` when the monitor runs in a container).
    #[arg(long, env = "HEMOSTAT_PROC_PATH", default_value = "/proc")]
    pub proc_path: PathBuf,

    /// A path on the filesystem whose fullness is disk pressure (Docker's data root).
    #[arg(long, env = "HEMOSTAT_DISK_PATH", default_value = "/")]
    pub disk_path: PathBuf,

    /// Disk % used that is disk pressure.
    #[arg(long, env = "HEMOSTAT_DISK_THRESHOLD", default_value = "90", value_parser = parse_percent)]
    pub disk_threshold: f64,

    /// Host memory % used that is memory pressure.
    #[arg(long, env = "HEMOSTAT_HOST_MEMORY_THRESHOLD", default_value = "95", value_parser = parse_percent)]
    pub host_memory_threshold: f64,

    /// Host CPU % (all cores) that is CPU pressure.
    #[arg(long, env = "HEMOSTAT_HOST_CPU_THRESHOLD", default_value = "95", value_parser = parse_percent)]
    pub host_cpu_threshold: f64,

    /// Consecutive host samples over (or back under) a host threshold (disk, memory, CPU)
    /// before it fires (or clears), 1 to 1000. Unset or empty: `HEMOSTAT_BREACH_SAMPLES`.
    #[arg(long, env = "HEMOSTAT_HOST_BREACH_SAMPLES", value_parser = parse_optional_samples)]
    pub host_breach_samples: Option<OptionalSamples>,

    /// How often Docker's own disk use (images, stopped containers) is measured.
    #[arg(long, env = "HEMOSTAT_DOCKER_DF_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub docker_df_interval: Duration,

    /// Log lines attached to an alert of a death, an OOM kill or a failing health check, read
    /// on this host (the analyzer reads no engine). 0 attaches none.
    #[arg(long, env = "HEMOSTAT_LOG_LINES", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub log_lines: u32,

    /// Byte budget of those lines after scrubbing (newest kept).
    #[arg(long, env = "HEMOSTAT_LOG_BYTES", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(256..=65_536))]
    pub log_bytes: u32,

    /// Longest wait for those lines; the alert goes with what arrived by then.
    #[arg(long, env = "HEMOSTAT_LOG_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub log_timeout: Duration,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub scope: Scope,
    pub stats_interval: Duration,
    pub stats_concurrency: StatsConcurrency,
    pub cpu: Threshold,
    pub memory: Threshold,
    pub breach_samples: u32,
    pub baseline: BaselineConfig,
    pub detect: DetectConfig,
    pub host_interval: Duration,
    pub proc_path: PathBuf,
    pub disk_path: PathBuf,
    pub disk_threshold: f64,
    pub host_memory_threshold: f64,
    pub host_cpu_threshold: f64,
    pub host_breach_samples: u32,
    pub startup_lookback: Duration,
    pub docker_df_interval: Duration,
    pub logs: AlertLogs,
}

/// The log tail attached to alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertLogs {
    pub lines: usize,
    pub bytes: usize,
    pub timeout: Duration,
}

/// How many stats requests a round keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsConcurrency {
    /// One per container, up to [`StatsConcurrency::AUTO_MAX`]: a round of up to that many
    /// containers takes one collector tick, however many there are.
    Auto,
    Fixed(usize),
}

impl StatsConcurrency {
    pub const AUTO_MAX: usize = 512;

    /// Requests in flight for a round over `containers` containers.
    pub fn in_flight(self, containers: usize) -> usize {
        match self {
            StatsConcurrency::Auto => containers.clamp(1, Self::AUTO_MAX),
            StatsConcurrency::Fixed(n) => n.max(1),
        }
    }
}

/// A sample count that may be given empty, meaning "not set": compose passes `VAR=` for a
/// variable the user left out, and that must fall back to the default, not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalSamples(pub Option<u32>);

fn parse_optional_samples(s: &str) -> Result<OptionalSamples, String> {
    if s.trim().is_empty() {
        return Ok(OptionalSamples(None));
    }
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(OptionalSamples(Some(n))),
        _ => Err(format!(
            "{s:?} is not valid; expected a number from 1 to 1000, or empty for the default"
        )),
    }
}

fn parse_stats_concurrency(s: &str) -> Result<StatsConcurrency, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(StatsConcurrency::Auto);
    }
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=StatsConcurrency::AUTO_MAX).contains(&n) => Ok(StatsConcurrency::Fixed(n)),
        _ => Err(format!(
            "{s:?} is not valid; expected auto or a number from 1 to {}",
            StatsConcurrency::AUTO_MAX
        )),
    }
}

fn within(
    variable: &'static str,
    d: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    if d > max {
        return Err(ConfigError {
            variable,
            message: format!("{d:?} is too long; expected at most {max:?}"),
        });
    }
    at_least(variable, d, min)
}

fn at_least(variable: &'static str, d: Duration, min: Duration) -> Result<Duration, ConfigError> {
    if d < min {
        return Err(ConfigError {
            variable,
            message: format!("{d:?} is too short; expected at least {min:?}"),
        });
    }
    Ok(d)
}

impl MonitorArgs {
    /// Checks what each flag alone cannot, and builds the typed config.
    pub fn validate(&self) -> Result<MonitorConfig, ConfigError> {
        self.common.validate()?;
        if self.cpu_critical < self.cpu_threshold {
            return Err(ConfigError {
                variable: "HEMOSTAT_CPU_CRITICAL",
                message: format!(
                    "{} is below HEMOSTAT_CPU_THRESHOLD ({}); expected a value >= it",
                    self.cpu_critical, self.cpu_threshold
                ),
            });
        }
        if self.memory_critical < self.memory_threshold {
            return Err(ConfigError {
                variable: "HEMOSTAT_MEMORY_CRITICAL",
                message: format!(
                    "{} is below HEMOSTAT_MEMORY_THRESHOLD ({}); expected a value >= it",
                    self.memory_critical, self.memory_threshold
                ),
            });
        }
        if !(self.baseline_z.is_finite() && (1.0..=20.0).contains(&self.baseline_z)) {
            return Err(ConfigError {
                variable: "HEMOSTAT_BASELINE_Z",
                message: format!("{} is out of range; expected 1 to 20", self.baseline_z),
            });
        }
        let ms = Duration::from_millis;
        Ok(MonitorConfig {
            scope: self.scope.scope()?,
            stats_interval: at_least("HEMOSTAT_STATS_INTERVAL", self.stats_interval, ms(500))?,
            stats_concurrency: self.stats_concurrency,
            cpu: Threshold {
                warning: self.cpu_threshold,
                critical: self.cpu_critical,
            },
            memory: Threshold {
                warning: self.memory_threshold,
                critical: self.memory_critical,
            },
            breach_samples: self.breach_samples,
            baseline: BaselineConfig {
                warmup: self.baseline_warmup,
                z: self.baseline_z,
                min_delta: self.baseline_min_delta,
                ..BaselineConfig::default()
            },
            detect: DetectConfig {
                stop_settle: self.stop_settle.min(ms(5000)),
                // A `docker restart`'s `start` follows its `stop` by the time the engine takes
                // to start the container: 145-192 ms measured on Engine 20.10 on a busy
                // 2-core machine. Under 250 ms restarts would be reported as a person's stop;
                // over a minute, a person's stop would be reported that late.
                restart_settle: within(
                    "HEMOSTAT_RESTART_SETTLE",
                    self.restart_settle,
                    ms(250),
                    ms(60_000),
                )?,
                reminder_interval: at_least(
                    "HEMOSTAT_REMINDER_INTERVAL",
                    self.reminder_interval,
                    ms(1000),
                )?,
                ..DetectConfig::default()
            },
            host_interval: at_least("HEMOSTAT_HOST_INTERVAL", self.host_interval, ms(500))?,
            proc_path: self.proc_path.clone(),
            disk_path: self.disk_path.clone(),
            disk_threshold: self.disk_threshold,
            host_memory_threshold: self.host_memory_threshold,
            host_cpu_threshold: self.host_cpu_threshold,
            host_breach_samples: self
                .host_breach_samples
                .and_then(|s| s.0)
                .unwrap_or(self.breach_samples),
            // A death older than a week is history on any reading; Docker's event history
            // (its newest 256 events), which tells a crash from a person's stop, rarely
            // reaches back that far.
            startup_lookback: within(
                "HEMOSTAT_STARTUP_LOOKBACK",
                self.startup_lookback,
                Duration::ZERO,
                Duration::from_secs(7 * 86_400),
            )?,
            docker_df_interval: at_least(
                "HEMOSTAT_DOCKER_DF_INTERVAL",
                self.docker_df_interval,
                ms(1000),
            )?,
            logs: AlertLogs {
                lines: self.log_lines as usize,
                bytes: self.log_bytes as usize,
                timeout: within("HEMOSTAT_LOG_TIMEOUT", self.log_timeout, ms(10), ms(10_000))?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hemostat_common::config::parse_from;

    fn parse(args: &[&str]) -> Result<MonitorConfig, String> {
        let mut all = vec!["hemostat-monitor"];
        all.extend_from_slice(args);
        let a = parse_from::<MonitorArgs, _, _>(all).map_err(|e| e.to_string())?;
        a.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.stats_interval, Duration::from_secs(10));
        assert_eq!(c.cpu.warning, 85.0);
        assert_eq!(c.memory.warning, 80.0);
        assert_eq!(c.breach_samples, 3);
        assert_eq!(c.host_breach_samples, 3);
        assert_eq!(c.detect.restart_settle, Duration::from_secs(1));
        assert_eq!(c.startup_lookback, Duration::from_secs(3600));
        assert_eq!(c.scope, Scope::default());
    }

    #[test]
    fn a_scope_label_narrows_the_scope() {
        let c = parse(&[
            "--monitor-all",
            "--scope-label",
            "com.docker.compose.project=shop",
        ])
        .unwrap();
        assert_eq!(
            c.scope,
            Scope {
                monitor_all: true,
                require: Some(("com.docker.compose.project".into(), "shop".into())),
            }
        );
    }

    #[test]
    fn host_breach_samples_follow_breach_samples_unless_set() {
        let c = parse(&["--breach-samples", "5"]).unwrap();
        assert_eq!((c.breach_samples, c.host_breach_samples), (5, 5));
        let c = parse(&["--breach-samples", "5", "--host-breach-samples", "2"]).unwrap();
        assert_eq!((c.breach_samples, c.host_breach_samples), (5, 2));
        let c = parse(&["--breach-samples", "5", "--host-breach-samples", ""]).unwrap();
        assert_eq!(c.host_breach_samples, 5, "empty is unset");
    }

    #[test]
    fn a_startup_lookback_of_zero_turns_it_off() {
        let c = parse(&["--startup-lookback", "0"]).unwrap();
        assert_eq!(c.startup_lookback, Duration::ZERO);
    }

    #[test]
    fn stats_concurrency_is_auto_by_default_and_follows_the_container_count() {
        assert_eq!(
            parse(&[]).unwrap().stats_concurrency,
            StatsConcurrency::Auto
        );
        let fixed = parse(&["--stats-concurrency", "64"])
            .unwrap()
            .stats_concurrency;
        assert_eq!(fixed, StatsConcurrency::Fixed(64));
        assert_eq!(
            parse(&["--stats-concurrency", "AUTO"])
                .unwrap()
                .stats_concurrency,
            StatsConcurrency::Auto
        );
        // (setting, containers, requests in flight)
        let cases = [
            (StatsConcurrency::Auto, 0, 1),
            (StatsConcurrency::Auto, 10, 10),
            (StatsConcurrency::Auto, 300, 300),
            (StatsConcurrency::Auto, 2000, 512),
            (StatsConcurrency::Fixed(32), 10, 32),
            (StatsConcurrency::Fixed(32), 300, 32),
        ];
        for (setting, containers, want) in cases {
            assert_eq!(
                setting.in_flight(containers),
                want,
                "{setting:?} {containers}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["--stats-interval", "often"], "HEMOSTAT_STATS_INTERVAL"),
            (&["--stats-interval", "10ms"], "HEMOSTAT_STATS_INTERVAL"),
            (&["--cpu-threshold", "150"], "HEMOSTAT_CPU_THRESHOLD"),
            (
                &["--cpu-threshold", "90", "--cpu-critical", "80"],
                "HEMOSTAT_CPU_CRITICAL",
            ),
            (&["--breach-samples", "0"], "HEMOSTAT_BREACH_SAMPLES"),
            (&["--monitor-all", "perhaps"], "HEMOSTAT_MONITOR_ALL"),
            (&["--scope-label", "shop"], "HEMOSTAT_SCOPE_LABEL"),
            (&["--scope-label", "=shop"], "HEMOSTAT_SCOPE_LABEL"),
            (&["--restart-settle", "10ms"], "HEMOSTAT_RESTART_SETTLE"),
            (&["--restart-settle", "5m"], "HEMOSTAT_RESTART_SETTLE"),
            (&["--restart-settle", "soon"], "HEMOSTAT_RESTART_SETTLE"),
            (&["--startup-lookback", "200h"], "HEMOSTAT_STARTUP_LOOKBACK"),
            (
                &["--startup-lookback", "an hour"],
                "HEMOSTAT_STARTUP_LOOKBACK",
            ),
            (
                &["--host-breach-samples", "0"],
                "HEMOSTAT_HOST_BREACH_SAMPLES",
            ),
            (
                &["--host-breach-samples", "1001"],
                "HEMOSTAT_HOST_BREACH_SAMPLES",
            ),
            (
                &["--host-breach-samples", "many"],
                "HEMOSTAT_HOST_BREACH_SAMPLES",
            ),
            (&["--baseline-z", "0.1"], "HEMOSTAT_BASELINE_Z"),
            (&["--redis-url", "mysql://x"], "REDIS_URL"),
            (&["--stats-concurrency", "0"], "HEMOSTAT_STATS_CONCURRENCY"),
            (
                &["--stats-concurrency", "many"],
                "HEMOSTAT_STATS_CONCURRENCY",
            ),
            (
                &["--stats-concurrency", "513"],
                "HEMOSTAT_STATS_CONCURRENCY",
            ),
            (&["--log-lines", "many"], "HEMOSTAT_LOG_LINES"),
            (&["--log-lines", "1001"], "HEMOSTAT_LOG_LINES"),
            (&["--log-bytes", "100"], "HEMOSTAT_LOG_BYTES"),
            (&["--log-timeout", "1ms"], "HEMOSTAT_LOG_TIMEOUT"),
            (&["--log-timeout", "1m"], "HEMOSTAT_LOG_TIMEOUT"),
        ];
        for (args, var) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(var), "{args:?}: {err}");
        }
    }
}
