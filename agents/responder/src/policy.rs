//! The responder's safety policies as plain arithmetic: restart backoff, circuit breaker and
//! storm guard. Their state lives in Redis (see `queue.rs`); the decisions live here, with
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

/// The storm guard: when many containers of one host start failing at once, the problem is the
/// host (or a shared dependency), and restarting everything makes it worse.
///
/// It is judged by the containers failing *now* that *started* failing within the window,
/// against the size of the host: a storm holds while at least [`StormPolicy::limit`] of them
/// have not recovered. Requests already healed do not count, and a storm ends by
/// itself once its failures are older than the window (or enough of them recover).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StormPolicy {
    /// The fewest failing containers that can be a storm, however small the host.
    pub floor: u32,
    /// The share (0-1] of the host's in-scope containers that makes a storm on a larger host.
    pub share: f64,
    /// How recent a failure must be to count.
    pub window: Duration,
}

impl StormPolicy {
    /// How many containers failing at once make a storm on a host with `in_scope` containers.
    pub fn limit(&self, in_scope: u32) -> u32 {
        let by_share = (self.share * f64::from(in_scope)).ceil();
        // `share` is in (0, 1] and `in_scope` a u32, so the product fits.
        self.floor.max(by_share as u32)
    }

    /// Whether `failing` recent failures on a host of `in_scope` containers are a storm.
    pub fn holds(&self, failing: u32, in_scope: u32) -> bool {
        failing >= self.limit(in_scope)
    }

    /// When a storm made of failures that began at `onsets_ms` stops holding by itself (the
    /// limit-th newest failure ages out of the window), if nothing recovers before.
    pub fn ends_at(&self, onsets_ms: &[u64], in_scope: u32) -> Option<u64> {
        let limit = self.limit(in_scope) as usize;
        let mut newest_first = onsets_ms.to_vec();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        let pivot = newest_first.get(limit.checked_sub(1)?)?;
        Some(pivot.saturating_add(self.window.as_millis() as u64))
    }
}

/// The host's budget of Docker writes: at most `per_minute` in any 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBudget {
    pub per_minute: u32,
}

impl WriteBudget {
    pub const WINDOW_MS: u64 = 60_000;

    /// `None` when a write may happen now; otherwise when the next one may, given the times of
    /// the writes in the last minute.
    pub fn next_slot(&self, writes_ms: &[u64], now_ms: u64) -> Option<u64> {
        let recent: Vec<u64> = writes_ms
            .iter()
            .copied()
            .filter(|t| now_ms.saturating_sub(*t) < Self::WINDOW_MS)
            .collect();
        if (recent.len() as u64) < u64::from(self.per_minute) {
            return None;
        }
        recent
            .iter()
            .min()
            .map(|oldest| oldest.saturating_add(Self::WINDOW_MS))
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
    fn a_storm_is_a_share_of_the_host_with_a_floor() {
        let p = StormPolicy {
            floor: 3,
            share: 0.3,
            window: Duration::from_secs(60),
        };
        // (failing now, in scope, storm?)
        let cases = [
            (1, 1, false),
            (2, 2, false),
            (3, 3, true),
            (3, 4, true),
            (2, 20, false),
            (5, 20, false),
            (6, 20, true),
            (8, 20, true),
            (29, 100, false),
            (30, 100, true),
        ];
        for (failing, in_scope, want) in cases {
            assert_eq!(p.holds(failing, in_scope), want, "{failing}/{in_scope}");
        }
    }

    #[test]
    fn a_storm_ends_when_its_failures_age_out() {
        let p = StormPolicy {
            floor: 3,
            share: 0.3,
            window: Duration::from_secs(60),
        };
        // Limit 3 on a host of 5: the third newest failure decides.
        assert_eq!(p.ends_at(&[10 * S, 12 * S, 11 * S, 5 * S], 5), Some(70 * S));
        assert_eq!(p.ends_at(&[10 * S, 12 * S], 5), None, "not a storm at all");
    }

    #[test]
    fn writes_wait_for_a_free_slot() {
        let b = WriteBudget { per_minute: 2 };
        assert_eq!(b.next_slot(&[], 100 * S), None);
        assert_eq!(b.next_slot(&[90 * S], 100 * S), None);
        assert_eq!(b.next_slot(&[50 * S, 90 * S], 100 * S), Some(110 * S));
        // A write older than a minute no longer counts.
        assert_eq!(b.next_slot(&[30 * S, 90 * S], 100 * S), None);
    }
}
