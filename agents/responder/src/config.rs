//! The responder's settings: flags and environment, validated once into [`ResponderConfig`].

use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;
use hemostat_common::config::{CommonArgs, ConfigError, parse_duration};
use hemostat_common::scope::{Scope, ScopeArgs};

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

    /// What the responder does with an action that passes every guard: `auto` acts,
    /// `approve` proposes it and waits for a person to approve it (dashboard, or the link in
    /// the chat message). A container's `hemostat.mode` label (auto or approve) wins over it.
    #[arg(long, env = "HEMOSTAT_REMEDIATION_MODE", value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,

    /// How long a proposal waits for a person's decision; unapproved, it expires and nothing
    /// is done.
    #[arg(long, env = "HEMOSTAT_APPROVAL_TTL", default_value = "15m", value_parser = parse_duration)]
    pub approval_ttl: Duration,

    #[command(flatten)]
    pub scope: ScopeArgs,

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

    /// The fewest containers failing at once that can be a storm, however small the host.
    #[arg(long, env = "HEMOSTAT_STORM_THRESHOLD", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub storm_threshold: u32,

    /// The share (0-1] of the host's in-scope containers failing at once that makes a storm on
    /// a larger host (the storm limit is the larger of this share and the threshold).
    #[arg(long, env = "HEMOSTAT_STORM_SHARE", default_value_t = 0.3)]
    pub storm_share: f64,

    /// Failures that began within this window count toward a storm; a storm ends by itself
    /// once they are older (held requests are then acted on if their problem still holds).
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

    /// `cleanup` removes only containers that exited at least this long ago.
    #[arg(long, env = "HEMOSTAT_CLEANUP_MIN_AGE", default_value = "24h", value_parser = parse_duration)]
    pub cleanup_min_age: Duration,

    /// At most one cleanup per host within this time.
    #[arg(long, env = "HEMOSTAT_CLEANUP_COOLDOWN", default_value = "1h", value_parser = parse_duration)]
    pub cleanup_cooldown: Duration,

    /// Request steps handled at once (judging, acting, one verification look). Waits take no
    /// slot: they are due times in Redis.
    #[arg(long, env = "HEMOSTAT_RESPONDER_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// How long a responder's claim on a request lasts without being renewed: after a crash,
    /// a peer or a successor takes the request over this long after the last renewal.
    #[arg(long, env = "HEMOSTAT_RESPONDER_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub lease: Duration,

    /// Most requests waiting in the host's queue; beyond it new requests stay on the stream
    /// until there is room.
    #[arg(long, env = "HEMOSTAT_RESPONDER_QUEUE_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub queue_max: u32,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Whether actions that pass the guards are taken or proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Act.
    Auto,
    /// Propose, and act only once a person approves.
    Approve,
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
    pub mode: Mode,
    pub approval_ttl: Duration,
    pub scope: Scope,
    pub backoff: BackoffPolicy,
    pub breaker: BreakerPolicy,
    pub storm: StormPolicy,
    pub docker_write_rate: u32,
    pub verify_timeout: Duration,
    pub stop_timeout: Duration,
    pub cleanup_volumes: bool,
    pub cleanup_min_age: Duration,
    pub cleanup_cooldown: Duration,
    pub concurrency: usize,
    pub lease: Duration,
    pub queue_max: usize,
}

impl ResponderArgs {
    pub fn validate(&self) -> Result<ResponderConfig, ConfigError> {
        self.common.validate()?;
        let scope = self.scope.scope()?;
        if self.lease < Duration::from_secs(1) || self.lease > Duration::from_secs(600) {
            return Err(ConfigError {
                variable: "HEMOSTAT_RESPONDER_LEASE",
                message: format!("{:?} is out of range; expected 1s to 10m", self.lease),
            });
        }
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
        if self.approval_ttl < Duration::from_secs(10)
            || self.approval_ttl > Duration::from_secs(7 * 86_400)
        {
            return Err(ConfigError {
                variable: "HEMOSTAT_APPROVAL_TTL",
                message: format!(
                    "{:?} is out of range; expected 10s to 7d",
                    self.approval_ttl
                ),
            });
        }
        Ok(ResponderConfig {
            dry_run: self.dry_run,
            mode: self.mode,
            approval_ttl: self.approval_ttl,
            scope,
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
                floor: self.storm_threshold,
                share: self.storm_share,
                window: self.storm_window,
            },
            docker_write_rate: self.docker_write_rate,
            verify_timeout: self.verify_timeout,
            stop_timeout: self.stop_timeout,
            cleanup_volumes: self.cleanup_volumes,
            cleanup_min_age: self.cleanup_min_age,
            cleanup_cooldown: self.cleanup_cooldown,
            concurrency: usize::from(self.concurrency),
            lease: self.lease,
            queue_max: self.queue_max as usize,
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
        assert_eq!(c.cleanup_min_age, Duration::from_secs(24 * 3600));
        assert_eq!((c.storm.floor, c.storm.share), (3, 0.3));
        assert_eq!(c.scope, Scope::default());
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
            (&["--scope-label", "=x"], "HEMOSTAT_SCOPE_LABEL"),
            (&["--lease", "0s"], "HEMOSTAT_RESPONDER_LEASE"),
            (&["--mode", "yolo"], "HEMOSTAT_REMEDIATION_MODE"),
            (&["--approval-ttl", "1s"], "HEMOSTAT_APPROVAL_TTL"),
            (&["--cleanup-min-age", "a day"], "HEMOSTAT_CLEANUP_MIN_AGE"),
        ];
        for (args, var) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(var), "{args:?}: {err}");
        }
    }
}
