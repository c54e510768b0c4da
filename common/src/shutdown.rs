//! Graceful shutdown: SIGTERM and SIGINT cancel one token that every loop watches.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The shutdown token and which signal (if any) triggered it.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Shutdown {
    /// A token that only cancels when asked to (tests, embedding).
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A token that SIGTERM or SIGINT also cancels. Must be called inside a Tokio runtime.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let shutdown = Shutdown::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let s = shutdown.clone();
        tokio::spawn(async move {
            let signo = tokio::select! {
                _ = term.recv() => libc_signal::SIGTERM,
                _ = int.recv() => libc_signal::SIGINT,
                // Someone else cancelled: nothing to record.
                () = s.token.cancelled() => return,
            };
            tracing::info!(signal = signo, "shutdown requested");
            s.signal.store(signo, Ordering::SeqCst);
            s.token.cancel();
        });
        Ok(shutdown)
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Stops the agent because one of its own tasks ended or panicked: every loop winds down,
    /// and the process exits 1 so that its supervisor restarts it.
    pub fn fail(&self) {
        self.signal.store(FAILED, Ordering::SeqCst);
        self.token.cancel();
    }

    /// Whether [`Shutdown::fail`] stopped it.
    pub fn failed(&self) -> bool {
        self.signal.load(Ordering::SeqCst) == FAILED
    }

    /// The exit code a process should end with: 0 when nothing signalled it, 128+signal after a
    /// signal (the convention shells and supervisors understand), 1 after [`Shutdown::fail`].
    pub fn exit_code(&self) -> i32 {
        match self.signal.load(Ordering::SeqCst) {
            0 => 0,
            FAILED => 1,
            s => 128 + s,
        }
    }
}

/// Stored instead of a signal number when a task of the agent's own stopped it.
const FAILED: i32 = -1;

/// The two signal numbers we care about (Linux values), without a libc dependency.
mod libc_signal {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
}
