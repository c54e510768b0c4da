//! The agent base: what every hemostat service gets when it starts (an [`AgentContext`]) and
//! how it stops (a bounded wait for its tasks).
//!
//! An agent is a name and a `run(ctx)`; there is no trait to implement. `main.rs` parses its
//! config, calls [`AgentContext::start`], runs the agent's loops on `ctx.tracker`, and ends
//! with [`AgentContext::finish`].

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, BusError, Outbox};
use crate::config::CommonArgs;
use crate::heartbeat::{self, Identity};
use crate::http::{self, Health};
use crate::metrics::{AgentMetrics, SharedRegistry};
use crate::shutdown::Shutdown;

/// Envelopes the outbox holds while Redis is away before samples start being dropped.
const OUTBOX_CAPACITY: usize = 20_000;

/// Bytes of envelopes the outbox holds while Redis is away: at 100 containers a metrics round
/// is ~32 KB, so this is about half an hour of samples at one round a second.
const OUTBOX_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Everything an agent needs, in one place.
#[derive(Debug)]
pub struct AgentContext {
    pub identity: Identity,
    pub bus: Bus,
    pub outbox: Outbox,
    pub metrics: AgentMetrics,
    pub registry: Arc<SharedRegistry>,
    pub health: Health,
    pub shutdown: Shutdown,
    /// Spawn the agent's long-running tasks here so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Where `/healthz` and `/metrics` actually listen (useful when configured with port 0).
    pub http_addr: SocketAddr,
    shutdown_timeout: std::time::Duration,
    /// Tasks that must outlive the agent's own (the outbox drains after they end).
    plumbing: TaskTracker,
}

impl AgentContext {
    /// Serves `/healthz` and `/metrics`, connects to Redis (waiting for it), and starts the
    /// outbox and the heartbeat.
    pub async fn start(
        common: &CommonArgs,
        agent: &str,
        host: String,
        shutdown: Shutdown,
    ) -> anyhow::Result<AgentContext> {
        let metrics = AgentMetrics::default();
        let registry = Arc::new(SharedRegistry::default());
        registry.with(|r| metrics.register(r));
        let health = Health::default();
        let plumbing = TaskTracker::new();

        // Listen first, so /healthz can say "waiting for redis" while we do.
        let listen = common.listen_for(agent);
        let (http_addr, server) = http::bind(
            listen,
            agent,
            health.clone(),
            registry.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(|e| http::bind_error(e, listen, common.listen.is_some()))?;
        plumbing.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "http listener failed");
            }
        });
        tracing::info!(%http_addr, "serving /healthz and /metrics");

        let bus = match Bus::connect_to(
            &common.redis_target(),
            common.stream_maxlen,
            metrics.clone(),
            health.clone(),
            &shutdown,
        )
        .await
        {
            Ok(bus) => bus,
            Err(BusError::Shutdown) => anyhow::bail!("shut down before redis was reachable"),
            Err(e) => return Err(e).context("connecting to redis"),
        };

        let identity = Identity {
            agent: agent.to_owned(),
            instance: format!("{agent}-{}-{}", host, std::process::id()),
            host,
            started_at: Utc::now(),
        };

        // The outbox gives up on undeliverable envelopes only once shutdown has been requested
        // and the shutdown timeout has passed.
        let give_up = Shutdown::new();
        {
            let give_up = give_up.clone();
            let shutdown = shutdown.clone();
            let timeout = common.shutdown_timeout;
            // Not tracked: a clean stop must not wait for this timer.
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(timeout).await;
                give_up.cancel();
            });
        }
        let (outbox, worker) = Outbox::new(bus.clone(), OUTBOX_CAPACITY, OUTBOX_MAX_BYTES, give_up);
        plumbing.spawn(worker);
        let tracker = TaskTracker::new();
        // Bounded by age as well as by length, and watched for memory.
        spawn_critical(
            &tracker,
            &shutdown,
            "stream trimming",
            crate::bus::trim_forever(
                bus.clone(),
                crate::acl::trimmed_by(agent),
                common.retention(),
                health.clone(),
                shutdown.clone(),
            ),
        );
        spawn_critical(
            &tracker,
            &shutdown,
            "heartbeat",
            heartbeat::run(
                bus.clone(),
                identity.clone(),
                common.heartbeat_interval,
                health.clone(),
                shutdown.clone(),
            ),
        );

        Ok(AgentContext {
            identity,
            bus,
            outbox,
            metrics,
            registry,
            health,
            shutdown,
            tracker,
            http_addr,
            shutdown_timeout: common.shutdown_timeout,
            plumbing,
        })
    }

    /// Runs one of the agent's long-lived loops on the tracker. A loop that returns or panics
    /// before shutdown was asked for stops the whole agent ([`Shutdown::fail`], exit code 1):
    /// an agent is never left half alive behind a healthy heartbeat.
    pub fn spawn_critical<F>(&self, what: &'static str, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        spawn_critical(&self.tracker, &self.shutdown, what, fut);
    }

    /// Waits for shutdown, then for the agent's tasks and the outbox to finish, at most the
    /// configured shutdown timeout. Returns false when something had to be abandoned.
    pub async fn finish(self) -> bool {
        self.shutdown.cancelled().await;
        let AgentContext {
            tracker,
            plumbing,
            outbox,
            shutdown_timeout,
            ..
        } = self;
        tracker.close();
        plumbing.close();
        // The outbox worker ends when its last sender is gone; ours is dropped here, the
        // agent's with its tasks.
        drop(outbox);
        let all = async {
            tracker.wait().await;
            plumbing.wait().await;
        };
        match tokio::time::timeout(shutdown_timeout + std::time::Duration::from_secs(1), all).await
        {
            Ok(()) => {
                tracing::info!("stopped cleanly");
                true
            }
            Err(_) => {
                tracing::warn!(timeout = ?shutdown_timeout, "tasks still running at shutdown; abandoning them");
                false
            }
        }
    }
}

/// Everything every agent's `main` does around its own work: answer `healthcheck` (container
/// health checks), parse flags and environment (exit 2 naming the variable on a bad value),
/// set up logging, validate into the typed config (exit 2 on error), start the runtime and the
/// signal handlers, run, and map the outcome to an exit code: 0 or 128+signal when it stopped
/// cleanly, 1 when something failed or had to be abandoned.
///
/// `run` returns `Ok(true)` for a clean stop (see [`AgentContext::finish`]) and `Ok(false)` when
/// it had to abandon work; one-off commands return whether they succeeded.
pub fn main<A, C>(
    name: &str,
    common: impl Fn(&A) -> &CommonArgs,
    validate: impl Fn(&A) -> Result<C, crate::config::ConfigError>,
    run: impl AsyncFnOnce(A, C, Shutdown) -> anyhow::Result<bool>,
) -> std::process::ExitCode
where
    A: clap::Parser,
{
    use std::process::ExitCode;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return crate::http::healthcheck_main(name.strip_prefix("hemostat-").unwrap_or(name));
    }
    if std::env::args().nth(1).as_deref() == Some("redis-users") {
        return crate::acl::redis_users_main(std::env::args().nth(2));
    }
    let args = match crate::config::parse::<A>() {
        Ok(a) => a,
        // Prints the message (naming the variable) and exits 2; --help and --version exit 0.
        Err(e) => e.exit(),
    };
    crate::telemetry::init(common(&args).log_format);
    crate::http::count_panics();
    let cfg = match validate(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let shutdown = match Shutdown::on_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(config = %common(&args).summary(), "{name} starting");
        match run(args, cfg, shutdown.clone()).await {
            Ok(true) => ExitCode::from(shutdown.exit_code() as u8),
            Ok(false) => ExitCode::from(1),
            Err(e) if shutdown.is_cancelled() => {
                tracing::info!(reason = format!("{e:#}"), "stopped during start-up");
                ExitCode::from(shutdown.exit_code() as u8)
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{name} failed");
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    })
}

/// [`AgentContext::spawn_critical`] for code that holds only the tracker and the shutdown.
pub fn spawn_critical<F>(tracker: &TaskTracker, shutdown: &Shutdown, what: &'static str, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::FutureExt as _;
    let shutdown = shutdown.clone();
    tracker.spawn(async move {
        // A panic is caught here (and counted by the panic hook); a task dropped because its
        // runtime is going away is neither, and says nothing.
        let ended = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
        // Returning after shutdown was asked for is the normal end.
        if shutdown.is_cancelled() {
            return;
        }
        match ended {
            Ok(()) => tracing::error!(
                task = what,
                "a task of this agent ended unexpectedly; stopping the agent"
            ),
            Err(_) => tracing::error!(
                task = what,
                "a task of this agent panicked; stopping the agent"
            ),
        }
        shutdown.fail();
    });
}

/// The name of the machine (or container) this process runs on: `HOSTNAME`, else
/// `/etc/hostname`, else `unknown`. For agents that read no Docker engine to ask its name.
pub fn machine_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    async fn settled(tracker: TaskTracker) {
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the task finished");
    }

    #[tokio::test]
    async fn a_panicking_task_fails_the_agent_with_exit_code_1() {
        let (tracker, shutdown) = (TaskTracker::new(), Shutdown::new());
        spawn_critical(&tracker, &shutdown, "doomed", async {
            panic!("boom");
        });
        settled(tracker).await;
        assert!(shutdown.failed());
        assert_eq!(shutdown.exit_code(), 1);
    }

    #[tokio::test]
    async fn a_task_that_returns_early_fails_the_agent() {
        let (tracker, shutdown) = (TaskTracker::new(), Shutdown::new());
        spawn_critical(&tracker, &shutdown, "quitter", async {});
        settled(tracker).await;
        assert_eq!(shutdown.exit_code(), 1);
    }

    #[tokio::test]
    async fn a_task_that_ends_at_shutdown_is_a_clean_stop() {
        let (tracker, shutdown) = (TaskTracker::new(), Shutdown::new());
        let s = shutdown.clone();
        spawn_critical(
            &tracker,
            &shutdown,
            "loop",
            async move { s.cancelled().await },
        );
        shutdown.cancel();
        settled(tracker).await;
        assert!(!shutdown.failed());
        assert_eq!(shutdown.exit_code(), 0);
    }

    #[test]
    fn a_task_dropped_with_its_runtime_says_nothing() {
        let (tracker, shutdown) = (TaskTracker::new(), Shutdown::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            spawn_critical(&tracker, &shutdown, "forever", std::future::pending());
            tokio::task::yield_now().await;
        });
        drop(rt);
        assert!(!shutdown.failed(), "a runtime going away is not a failure");
    }
}
