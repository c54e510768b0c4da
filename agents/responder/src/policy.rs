//! The responder's safety policies as plain arithmetic: restart backoff, circuit breaker and
//! storm guard. Their state lives in Redis (see `state.rs`); the decisions live here, with
//! explicit time, so each is a table of one-line tests.

use std::time::Duration;

/// CrashLoopBackOff-style restart delays: the first remediation is immediate, then each one
/// waits `initial`, doubling, capped at `max`; a quiet spell of `reset_after` starts over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl BackoffPolicy {
    /// How many remediations form the current streak: counted back from the newest while the
    /// gaps (and the time since the newest) stay under `reset_after`. `history` holds
    /// millisecond timestamps, oldest first.
    pub fn streak(&self, history: &[u64], now_ms: u64) -> u32 {
        let reset = self.reset_after.as_millis() as u64;
        let mut later = now_ms;
        let mut n = 0;
        for &t in history.iter().rev() {
            if later.saturating_sub(t) >= reset {
                break;
            }
            n += 1;
            later = t;
        }
        n
    }

    /// The delay owed after a streak of `n` remediations.
    pub fn delay_after(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(30));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// How long to wait from `now_ms` before the next remediation may happen.
    pub fn wait(&self, history: &[u64], now_ms: u64) -> Duration {
        let n = self.streak(history, now_ms);
        let Some(&last) = history.last() else {
            return Duration::ZERO;
        };
        let due = last.saturating_add(self.delay_after(n).as_millis() as u64);
        Duration::from_millis(due.saturating_sub(now_ms))
    }
}

/// A circuit breaker per container: `threshold` remediations within `window` open it, and it
/// stays open for `cooldown` (or until a person resets it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    pub threshold: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

impl BreakerPolicy {
    /// Whether one more remediation would exceed the budget, given how many happened in the
    /// window already.
    pub fn trips(&self, in_window: u32) -> bool {
        in_window >= self.threshold
    }
}

/// The storm guard: when many containers of one host need remediation at once, the problem is
/// the host (or a shared dependency), and restarting everything makes it worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StormPolicy {
    /// More distinct containers than this within the window is a storm.
    pub threshold: u32,
    /// Or more than this share of the host's in-scope containers (counted from three on, so
    /// two failures on a two-container host are not a "storm").
    pub share: f64,
    pub window: Duration,
}

impl StormPolicy {
    /// Minimum failing containers before the share counts.
    pub const SHARE_MIN: u32 = 3;

    pub fn trips(&self, failing: u32, in_scope: u32) -> bool {
        failing > self.threshold
            || (failing >= Self::SHARE_MIN
                && in_scope > 0
                && f64::from(failing) / f64::from(in_scope) > self.share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn k8s() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }

    #[test]
    fn delays_double_from_10s_to_a_300s_cap() {
        let b = k8s();
        let want = [0, 10, 20, 40, 80, 160, 300, 300, 300];
        for (n, secs) in want.iter().enumerate() {
            assert_eq!(b.delay_after(n as u32), Duration::from_secs(*secs), "n={n}");
        }
        assert_eq!(b.delay_after(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn waits_follow_the_streak() {
        let b = k8s();
        // (history in seconds, now in seconds, expected wait in seconds)
        let cases: &[(&[u64], u64, u64)] = &[
            (&[], 100, 0),
            (&[100], 100, 10),
            (&[100], 105, 5),
            (&[100], 111, 0),
            (&[100, 110], 110, 20),
            (&[100, 110, 130], 131, 39),
            // Ten quiet minutes since the last one: the streak starts over.
            (&[100, 110, 130], 130 + 600, 0),
            // A quiet gap inside the history also resets: only [900] counts.
            (&[100, 110, 900], 901, 9),
        ];
        for (history, now, wait) in cases {
            let h: Vec<u64> = history.iter().map(|s| s * S).collect();
            assert_eq!(
                b.wait(&h, now * S),
                Duration::from_secs(*wait),
                "history {history:?} now {now}"
            );
        }
    }

    #[test]
    fn breaker_opens_at_the_threshold() {
        let p = BreakerPolicy {
            threshold: 5,
            window: Duration::from_secs(1800),
            cooldown: Duration::from_secs(3600),
        };
        assert!(!p.trips(4));
        assert!(p.trips(5));
    }

    #[test]
    fn storm_by_count_or_share() {
        let p = StormPolicy {
            threshold: 5,
            share: 0.5,
            window: Duration::from_secs(60),
        };
        let cases = [
            (1, 1, false),
            (2, 2, false),
            (3, 4, true),
            (3, 10, false),
            (5, 100, false),
            (6, 100, true),
        ];
        for (failing, in_scope, want) in cases {
            assert_eq!(p.trips(failing, in_scope), want, "{failing}/{in_scope}");
        }
    }
}
