//! The responder's settings: flags and environment, validated once into [`ResponderConfig`].

use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;
use hemostat_common::config::{CommonArgs, ConfigError, parse_duration};

use crate::policy::{BackoffPolicy, BreakerPolicy, StormPolicy};

/// hemostat responder: the only component that writes to Docker. Restarts, stops and cleans up
/// containers under safety rules, verifies, and reports every decision.
#[derive(Debug, Clone, Parser)]
#[command(name = "hemostat-responder", version, about)]
pub struct ResponderArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The Docker API. Default: the local socket.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// Decide everything, touch nothing: no Docker write happens, and every report says so.
    #[arg(long, env = "HEMOSTAT_DRY_RUN", default_value = "false", value_parser = BoolishValueParser::new(),
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,

    /// Act on every container, not only those labelled `hemostat.enable=true`
    /// (`hemostat.enable=false` and protection still apply).
    #[arg(long, env = "HEMOSTAT_MONITOR_ALL", default_value = "false", value_parser = BoolishValueParser::new(),
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub monitor_all: bool,

    /// First restart delay of a container that keeps failing (doubles each time).
    #[arg(long, env = "HEMOSTAT_BACKOFF_INITIAL", default_value = "10s", value_parser = parse_duration)]
    pub backoff_initial: Duration,

    /// Longest restart delay.
    #[arg(long, env = "HEMOSTAT_BACKOFF_MAX", default_value = "300s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// After this long without a remediation the delay starts over.
    #[arg(long, env = "HEMOSTAT_BACKOFF_RESET", default_value = "10m", value_parser = parse_duration)]
    pub backoff_reset: Duration,

    /// Remediations of one container within the window that open its circuit breaker.
    #[arg(long, env = "HEMOSTAT_BREAKER_THRESHOLD", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breaker_threshold: u32,

    /// The circuit breaker's counting window.
    #[arg(long, env = "HEMOSTAT_BREAKER_WINDOW", default_value = "30m", value_parser = parse_duration)]
    pub breaker_window: Duration,

    /// How long an open breaker blocks actions (or until reset).
    #[arg(long, env = "HEMOSTAT_BREAKER_COOLDOWN", default_value = "1h", value_parser = parse_duration)]
    pub breaker_cooldown: Duration,

    /// Distinct containers needing remediation within the storm window that pause remediation.
    #[arg(long, env = "HEMOSTAT_STORM_THRESHOLD", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub storm_threshold: u32,

    /// Or this share (0-1) of the host's in-scope containers, whichever is reached first.
    #[arg(long, env = "HEMOSTAT_STORM_SHARE", default_value_t = 0.5)]
    pub storm_share: f64,

    /// The storm guard's window, and how long remediation stays paused once it trips.
    #[arg(long, env = "HEMOSTAT_STORM_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub storm_window: Duration,

    /// Most Docker writes per minute on this host.
    #[arg(long, env = "HEMOSTAT_DOCKER_WRITE_RATE", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub docker_write_rate: u32,

    /// How long verification waits for the container to run (and be healthy).
    #[arg(long, env = "HEMOSTAT_VERIFY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub verify_timeout: Duration,

    /// Stop timeout when a container has no `hemostat.stop_timeout` label.
    #[arg(long, env = "HEMOSTAT_STOP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub stop_timeout: Duration,

    /// Let `cleanup` delete the anonymous volumes of removed containers. Off by default.
    #[arg(long, env = "HEMOSTAT_CLEANUP_VOLUMES", default_value = "false", value_parser = BoolishValueParser::new(),
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub cleanup_volumes: bool,

    /// Requests handled at once (different containers; one container is never acted on twice
    /// at once).
    #[arg(long, env = "HEMOSTAT_RESPONDER_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off commands instead of running the service.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Close a container's circuit breaker and forget its restart history, then exit.
    ResetBreaker {
        /// The container's name.
        container: String,
    },
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    pub dry_run: bool,
    pub monitor_all: bool,
    pub backoff: BackoffPolicy,
    pub breaker: BreakerPolicy,
    pub storm: StormPolicy,
    pub docker_write_rate: u32,
    pub verify_timeout: Duration,
    pub stop_timeout: Duration,
    pub cleanup_volumes: bool,
    pub concurrency: usize,
}

impl ResponderArgs {
    pub fn validate(&self) -> Result<ResponderConfig, ConfigError> {
        self.common.validate()?;
        if self.backoff_max < self.backoff_initial {
            return Err(ConfigError {
                variable: "HEMOSTAT_BACKOFF_MAX",
                message: format!(
                    "{:?} is below HEMOSTAT_BACKOFF_INITIAL ({:?}); expected a value >= it",
                    self.backoff_max, self.backoff_initial
                ),
            });
        }
        if !(self.storm_share.is_finite() && self.storm_share > 0.0 && self.storm_share <= 1.0) {
            return Err(ConfigError {
                variable: "HEMOSTAT_STORM_SHARE",
                message: format!(
                    "{} is out of range; expected a share in (0, 1]",
                    self.storm_share
                ),
            });
        }
        if self.stop_timeout > Duration::from_secs(3600) {
            return Err(ConfigError {
                variable: "HEMOSTAT_STOP_TIMEOUT",
                message: format!("{:?} is too long; expected at most 1h", self.stop_timeout),
            });
        }
        Ok(ResponderConfig {
            dry_run: self.dry_run,
            monitor_all: self.monitor_all,
            backoff: BackoffPolicy {
                initial: self.backoff_initial,
                max: self.backoff_max,
                reset_after: self.backoff_reset,
            },
            breaker: BreakerPolicy {
                threshold: self.breaker_threshold,
                window: self.breaker_window,
                cooldown: self.breaker_cooldown,
            },
            storm: StormPolicy {
                threshold: self.storm_threshold,
                share: self.storm_share,
                window: self.storm_window,
            },
            docker_write_rate: self.docker_write_rate,
            verify_timeout: self.verify_timeout,
            stop_timeout: self.stop_timeout,
            cleanup_volumes: self.cleanup_volumes,
            concurrency: usize::from(self.concurrency),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::config::parse_from;

    fn parse(args: &[&str]) -> Result<ResponderConfig, String> {
        let mut all = vec!["hemostat-responder"];
        all.extend_from_slice(args);
        parse_from::<ResponderArgs, _, _>(all)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.backoff.initial, Duration::from_secs(10));
        assert_eq!(c.backoff.max, Duration::from_secs(300));
        assert_eq!(c.backoff.reset_after, Duration::from_secs(600));
        assert_eq!(c.breaker.threshold, 5);
        assert_eq!(c.breaker.window, Duration::from_secs(1800));
        assert!(!c.cleanup_volumes);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--backoff-initial", "20s", "--backoff-max", "10s"],
                "HEMOSTAT_BACKOFF_MAX",
            ),
            (&["--storm-share", "2"], "HEMOSTAT_STORM_SHARE"),
            (&["--dry-run", "maybe"], "HEMOSTAT_DRY_RUN"),
            (&["--breaker-threshold", "0"], "HEMOSTAT_BREAKER_THRESHOLD"),
            (&["--verify-timeout", "soon"], "HEMOSTAT_VERIFY_TIMEOUT"),
        ];
        for (args, var) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(var), "{args:?}: {err}");
        }
    }
}
