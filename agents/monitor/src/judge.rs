//! Judging samples: thresholds that must hold for several consecutive samples, a learned
//! per-container baseline for what fixed thresholds miss, and the firing → reminder → recovered
//! life cycle that keeps alerts to one per problem.

use std::time::{Duration, Instant};

use hemostat_common::events::Severity;

/// What a watch says after a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The problem started (after `sustain` samples over the limit).
    Fire { severity: Severity, samples: u32 },
    /// Still going on, and the reminder interval has passed.
    Remind { severity: Severity, samples: u32 },
    /// Cleared (after `sustain` samples under the limit).
    Clear,
}

/// One metric's breach state.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    over: u32,
    under: u32,
    firing: Option<(Instant, Severity)>,
}

impl Watch {
    /// Feeds one sample's verdict: `breach` is `Some(severity)` when the sample is over the
    /// limit. Fires after `sustain` consecutive breaching samples and clears after `sustain`
    /// consecutive good ones, so one spike or one dip changes nothing.
    pub fn observe(
        &mut self,
        breach: Option<Severity>,
        sustain: u32,
        reminder: Duration,
        now: Instant,
    ) -> Option<Transition> {
        let sustain = sustain.max(1);
        match breach {
            Some(severity) => {
                self.over = self.over.saturating_add(1);
                self.under = 0;
                match &mut self.firing {
                    None if self.over >= sustain => {
                        self.firing = Some((now, severity));
                        Some(Transition::Fire {
                            severity,
                            samples: self.over,
                        })
                    }
                    None => None,
                    Some((last, sev)) => {
                        // One alert per problem: a worsening (warning → critical) is carried by
                        // the next reminder, not announced as a second problem.
                        *sev = severity.max(*sev);
                        if now.duration_since(*last) >= reminder {
                            *last = now;
                            Some(Transition::Remind {
                                severity: *sev,
                                samples: self.over,
                            })
                        } else {
                            None
                        }
                    }
                }
            }
            None => {
                self.under = self.under.saturating_add(1);
                self.over = 0;
                if self.firing.is_some() && self.under >= sustain {
                    self.firing = None;
                    Some(Transition::Clear)
                } else {
                    None
                }
            }
        }
    }

    pub fn is_firing(&self) -> bool {
        self.firing.is_some()
    }

    pub fn consecutive_over(&self) -> u32 {
        self.over
    }
}

/// A fixed threshold with a critical level above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub warning: f64,
    pub critical: f64,
}

impl Threshold {
    pub fn classify(&self, value: f64) -> Option<Severity> {
        if value >= self.critical {
            Some(Severity::Critical)
        } else if value >= self.warning {
            Some(Severity::Warning)
        } else {
            None
        }
    }
}

/// Settings of the learned baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineConfig {
    /// Samples before the baseline judges anything.
    pub warmup: u32,
    /// How many standard deviations from the mean is an anomaly.
    pub z: f64,
    /// An anomaly must also be this many points above the mean, so a container whose CPU sits
    /// at exactly 0.1 % with no variance does not alarm at 0.5 %.
    pub min_delta: f64,
    /// EWMA weight of each new sample.
    pub alpha: f64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            warmup: 30,
            z: 4.0,
            min_delta: 15.0,
            alpha: 0.1,
        }
    }
}

/// An exponentially weighted mean and variance: a streaming baseline that follows slow drift
/// and flags sudden departures.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    n: u32,
    mean: f64,
    var: f64,
}

impl Baseline {
    /// Judges `x` against the baseline so far, then learns from it. Returns the threshold it
    /// was over (mean + z·σ) when it is an upward anomaly after warm-up.
    pub fn observe(&mut self, x: f64, cfg: &BaselineConfig) -> Option<f64> {
        let verdict = if self.n >= cfg.warmup {
            let sd = self.var.sqrt();
            let limit = (self.mean + cfg.z * sd).max(self.mean + cfg.min_delta);
            (x > limit).then_some(limit)
        } else {
            None
        };
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            // Warm-up learns fast (plain running mean), then settles to the EWMA weight.
            let a = cfg.alpha.max(1.0 / f64::from(self.n + 1));
            let d = x - self.mean;
            self.mean += a * d;
            self.var = (1.0 - a) * (self.var + a * d * d);
        }
        self.n = self.n.saturating_add(1);
        verdict
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    pub fn stddev(&self) -> f64 {
        self.var.sqrt()
    }

    pub fn samples(&self) -> u32 {
        self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Severity::*;

    /// Feeds `values` one second apart through a watch with `threshold`, sustain 3 and a
    /// reminder every 10 s; returns the transitions at each index.
    fn check(values: &[f64]) -> Vec<(usize, Transition)> {
        let th = Threshold {
            warning: 85.0,
            critical: 95.0,
        };
        let mut w = Watch::default();
        let t0 = Instant::now();
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                w.observe(
                    th.classify(*v),
                    3,
                    Duration::from_secs(10),
                    t0 + Duration::from_secs(i as u64),
                )
                .map(|t| (i, t))
            })
            .collect()
    }

    #[test]
    fn a_single_spike_is_ignored() {
        assert_eq!(check(&[10.0, 99.0, 10.0, 99.0, 99.0, 10.0]), []);
    }

    #[test]
    fn sustained_breach_fires_once_then_clears_once() {
        assert_eq!(
            check(&[90.0, 90.0, 90.0, 90.0, 90.0, 10.0, 10.0, 10.0, 10.0]),
            [
                (
                    2,
                    Transition::Fire {
                        severity: Warning,
                        samples: 3
                    }
                ),
                (7, Transition::Clear)
            ]
        );
    }

    #[test]
    fn a_dip_does_not_clear() {
        assert_eq!(
            check(&[90.0, 90.0, 90.0, 10.0, 90.0, 10.0, 10.0]),
            [(
                2,
                Transition::Fire {
                    severity: Warning,
                    samples: 3
                }
            )]
        );
    }

    #[test]
    fn reminders_come_at_the_interval_and_carry_the_worst_severity() {
        let mut values = vec![90.0; 5];
        values.extend([99.0; 20]);
        assert_eq!(
            check(&values),
            [
                (
                    2,
                    Transition::Fire {
                        severity: Warning,
                        samples: 3
                    }
                ),
                (
                    12,
                    Transition::Remind {
                        severity: Critical,
                        samples: 13
                    }
                ),
                (
                    22,
                    Transition::Remind {
                        severity: Critical,
                        samples: 23
                    }
                ),
            ]
        );
    }

    #[test]
    fn baseline_flags_a_jump_after_warmup_only() {
        let cfg = BaselineConfig {
            warmup: 10,
            ..BaselineConfig::default()
        };
        let mut b = Baseline::default();
        // Before warm-up, nothing is an anomaly.
        assert_eq!(b.observe(60.0, &cfg), None);
        let mut b = Baseline::default();
        for i in 0..40 {
            let x = 5.0 + f64::from(i % 3); // 5..7, a quiet container
            assert_eq!(b.observe(x, &cfg), None, "sample {i}");
        }
        assert!((b.mean() - 6.0).abs() < 1.0, "mean {}", b.mean());
        assert!(
            b.observe(40.0, &cfg).is_some(),
            "a jump to 40 % is an anomaly"
        );
        assert_eq!(b.observe(8.0, &cfg), None, "within noise");
    }

    #[test]
    fn baseline_needs_the_minimum_delta() {
        let cfg = BaselineConfig {
            warmup: 5,
            ..BaselineConfig::default()
        };
        let mut b = Baseline::default();
        for _ in 0..20 {
            b.observe(0.1, &cfg);
        }
        assert_eq!(
            b.observe(3.0, &cfg),
            None,
            "σ≈0 must not make 3 % an anomaly"
        );
        assert!(b.observe(20.0, &cfg).is_some());
    }
}
