//! The deterministic rules: always on, and the fallback for every LLM failure.
//!
//! A table of rules, first match wins. Each rule names the facts it needs, the action it
//! recommends (from the closed allow-list), a confidence and a root cause a person can read.

use hemostat_common::events::{Action, AlertKind, HostAlertKind};

/// Which way a metric has been going over the recent samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trend {
    Rising,
    Flat,
    Falling,
    /// Too few samples to say.
    #[default]
    Unknown,
}

impl Trend {
    /// Fits a least-squares line through `values` (one per sample) and calls it rising or
    /// falling when the fitted change over the window exceeds `min_change` points.
    pub fn of(values: &[f64], min_change: f64) -> Trend {
        let n = values.len();
        if n < 3 {
            return Trend::Unknown;
        }
        let nf = n as f64;
        let mean_x = (nf - 1.0) / 2.0;
        let mean_y = values.iter().sum::<f64>() / nf;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (i, y) in values.iter().enumerate() {
            let dx = i as f64 - mean_x;
            sxy += dx * (y - mean_y);
            sxx += dx * dx;
        }
        let change = sxy / sxx * (nf - 1.0);
        if change > min_change {
            Trend::Rising
        } else if change < -min_change {
            Trend::Falling
        } else {
            Trend::Flat
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trend::Rising => "rising",
            Trend::Flat => "flat",
            Trend::Falling => "falling",
            Trend::Unknown => "unknown",
        }
    }
}

/// What the analyzer knows about the alert, its container and its history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The container problem, for container alerts.
    pub kind: Option<AlertKind>,
    /// The host problem, for host alerts.
    pub host_kind: Option<HostAlertKind>,
    pub user_initiated: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub restart_count: i64,
    pub memory_limit_bytes: Option<u64>,
    pub health_output: Option<String>,
    pub cpu_trend: Trend,
    pub memory_trend: Trend,
    /// Remediations of this container within the crash-loop window.
    pub recent_remediations: u32,
    /// Health alerts for this container within the crash-loop window (this one included).
    pub recent_alerts: u32,
    /// The crash-loop budget: more remediations or restarts than this in the window means
    /// restarting again will not help.
    pub crash_loop_budget: u32,
}

/// A rules verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The rule that decided.
    pub rule: &'static str,
    pub action: Action,
    pub confidence: f64,
    pub root_cause: String,
    pub reason: String,
    /// True when nothing is wrong that hemostat should act on.
    pub false_alarm: bool,
    /// True when a person must look (the analyzer also publishes an escalation).
    pub escalate: bool,
    /// True when this verdict is final: no LLM is asked, whatever it would say.
    pub binding: bool,
}

/// One row of the table.
pub struct Rule {
    pub name: &'static str,
    /// The facts it looks at, for the documentation and the reason line.
    pub needs: &'static str,
    pub matches: fn(&Facts) -> bool,
    pub action: Action,
    pub confidence: f64,
    pub false_alarm: bool,
    pub escalate: bool,
    /// A safety verdict no LLM may overrule: with this rule deciding, the LLM is not even
    /// asked (and the container's logs are not read). Every escalating rule is binding: an
    /// escalation says "not acting: a person must look", and an LLM's restart published beside
    /// it would contradict it.
    pub binding: bool,
    pub root_cause: fn(&Facts) -> String,
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!("{} MiB", b / (1024 * 1024)))
        .unwrap_or_else(|| "its".to_owned())
}

fn is(f: &Facts, k: AlertKind) -> bool {
    f.kind == Some(k)
}

/// The rules, in the order they are tried.
pub const RULES: &[Rule] = &[
    Rule {
        name: "user_initiated",
        needs: "user_initiated",
        matches: |f| f.user_initiated,
        action: Action::None,
        confidence: 1.0,
        false_alarm: true,
        escalate: false,
        // Safety rule 4: a person's stop or pause is never "failed", whatever the logs say.
        binding: true,
        root_cause: |_| {
            "a person stopped or paused the container; hemostat never overrides that".into()
        },
    },
    Rule {
        name: "crash_loop",
        needs: "kind, restart_count, recent_remediations",
        matches: |f| {
            matches!(
                f.kind,
                Some(AlertKind::Died | AlertKind::OomKilled | AlertKind::Unhealthy)
            ) && (f.recent_remediations >= f.crash_loop_budget
                || f.restart_count >= i64::from(f.crash_loop_budget))
        },
        action: Action::None,
        confidence: 0.9,
        false_alarm: false,
        escalate: true,
        // Safety rules 3 and 11: restarting a container that keeps failing does not fix it;
        // the escalation asks a person instead, and no model may talk it into another restart.
        binding: true,
        root_cause: |f| {
            format!(
                "crash loop: {} remediations recently and {} restarts; restarting again will not fix it",
                f.recent_remediations, f.restart_count
            )
        },
    },
    Rule {
        name: "oom_kill",
        needs: "kind=oom_killed or oom_killed, memory_limit_bytes",
        matches: |f| is(f, AlertKind::OomKilled) || (is(f, AlertKind::Died) && f.oom_killed),
        action: Action::Restart,
        confidence: 0.9,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |f| {
            format!(
                "the container was OOM-killed: the {} memory limit is too low for its load (or it leaks)",
                mib(f.memory_limit_bytes)
            )
        },
    },
    Rule {
        name: "oom_in_running_container",
        needs: "kind=oom",
        matches: |f| is(f, AlertKind::Oom),
        action: Action::None,
        confidence: 0.6,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |f| {
            format!(
                "a process inside the container hit the {} memory limit and was killed; the container kept running",
                mib(f.memory_limit_bytes)
            )
        },
    },
    Rule {
        name: "clean_exit",
        needs: "kind=died, exit_code=0",
        matches: |f| is(f, AlertKind::Died) && f.exit_code == Some(0),
        action: Action::None,
        confidence: 0.85,
        false_alarm: true,
        escalate: false,
        binding: false,
        root_cause: |_| {
            "the process exited cleanly (exit code 0): a finished job, not a crash".into()
        },
    },
    Rule {
        name: "crash",
        needs: "kind=died, exit_code≠0",
        matches: |f| is(f, AlertKind::Died),
        action: Action::Restart,
        confidence: 0.85,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |f| match f.exit_code {
            Some(137) => "the process was killed with SIGKILL (exit code 137)".into(),
            Some(139) => "the process crashed with a segmentation fault (exit code 139)".into(),
            Some(143) => {
                "the process was terminated by SIGTERM (exit code 143) without a stop".into()
            }
            Some(c) => format!("the process crashed with exit code {c}"),
            None => "the process died".into(),
        },
    },
    Rule {
        name: "failing_health_check",
        needs: "kind=unhealthy, health_output",
        matches: |f| is(f, AlertKind::Unhealthy),
        action: Action::Restart,
        confidence: 0.8,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |f| match f
            .health_output
            .as_deref()
            .map(str::trim)
            .filter(|o| !o.is_empty())
        {
            Some(out) => format!("the health check keeps failing: {out}"),
            None => "the health check keeps failing".into(),
        },
    },
    Rule {
        name: "cpu_runaway",
        needs: "kind=cpu_high, cpu_trend=rising",
        matches: |f| is(f, AlertKind::CpuHigh) && f.cpu_trend == Trend::Rising,
        action: Action::Restart,
        confidence: 0.75,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |_| {
            "CPU is over its threshold and still rising: a runaway loop or a stuck worker".into()
        },
    },
    Rule {
        name: "cpu_sustained",
        needs: "kind=cpu_high",
        matches: |f| is(f, AlertKind::CpuHigh),
        action: Action::None,
        confidence: 0.6,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |_| {
            "CPU is high but steady: likely real load; restarting would only drop work".into()
        },
    },
    Rule {
        name: "memory_leak",
        needs: "kind=memory_high, memory_trend=rising",
        matches: |f| is(f, AlertKind::MemoryHigh) && f.memory_trend == Trend::Rising,
        action: Action::Restart,
        confidence: 0.8,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |f| {
            format!(
                "memory keeps growing towards the {} limit: a leak; a restart buys time before an OOM kill",
                mib(f.memory_limit_bytes)
            )
        },
    },
    Rule {
        name: "memory_high",
        needs: "kind=memory_high",
        matches: |f| is(f, AlertKind::MemoryHigh),
        action: Action::None,
        confidence: 0.6,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |_| "memory is high but not growing: watch it; no action yet".into(),
    },
    Rule {
        name: "anomaly",
        needs: "kind=anomaly",
        matches: |f| is(f, AlertKind::Anomaly),
        action: Action::None,
        confidence: 0.5,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |_| {
            "the container is far outside its usual behaviour; worth a look, not an action".into()
        },
    },
    Rule {
        name: "disk_pressure",
        needs: "host_kind=disk_pressure",
        matches: |f| f.host_kind == Some(HostAlertKind::DiskPressure),
        action: Action::Cleanup,
        confidence: 0.8,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |_| {
            "the host's disk is nearly full: exited containers and dangling images can be removed"
                .into()
        },
    },
    Rule {
        name: "host_pressure",
        needs: "host_kind=memory_pressure|cpu_pressure",
        matches: |f| f.host_kind.is_some(),
        action: Action::None,
        confidence: 0.7,
        false_alarm: false,
        escalate: true,
        // Safety rule 5: a host-wide problem pauses remediation and escalates. (Host alerts are
        // decided by the rules alone anyway: there is no container log to ask about.)
        binding: true,
        root_cause: |f| {
            format!(
                "the whole host is under {} pressure: restarting containers would not help",
                match f.host_kind {
                    Some(HostAlertKind::CpuPressure) => "CPU",
                    _ => "memory",
                }
            )
        },
    },
    Rule {
        name: "unknown",
        needs: "",
        matches: |_| true,
        action: Action::None,
        confidence: 0.3,
        false_alarm: false,
        escalate: false,
        binding: false,
        root_cause: |_| "no rule explains this alert".into(),
    },
];

/// Runs the table; the last rule matches everything, so there is always a verdict.
pub fn decide(f: &Facts) -> Verdict {
    let rule = RULES
        .iter()
        .find(|r| (r.matches)(f))
        .unwrap_or(&RULES[RULES.len() - 1]);
    Verdict {
        rule: rule.name,
        action: rule.action,
        confidence: rule.confidence,
        root_cause: (rule.root_cause)(f),
        reason: if rule.needs.is_empty() {
            format!("rule {}", rule.name)
        } else {
            format!("rule {} ({})", rule.name, rule.needs)
        },
        false_alarm: rule.false_alarm,
        escalate: rule.escalate,
        binding: rule.binding,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn facts(kind: AlertKind) -> Facts {
        Facts {
            kind: Some(kind),
            crash_loop_budget: 5,
            ..Facts::default()
        }
    }

    /// One line per case: the facts, the rule that must decide, its action.
    #[test]
    fn every_rule() {
        let cases: Vec<(Facts, &str, Action)> = vec![
            (
                Facts {
                    user_initiated: true,
                    ..facts(AlertKind::Stopped)
                },
                "user_initiated",
                Action::None,
            ),
            (
                Facts {
                    user_initiated: true,
                    ..facts(AlertKind::Paused)
                },
                "user_initiated",
                Action::None,
            ),
            (
                Facts {
                    restart_count: 7,
                    exit_code: Some(1),
                    ..facts(AlertKind::Died)
                },
                "crash_loop",
                Action::None,
            ),
            (
                Facts {
                    recent_remediations: 5,
                    ..facts(AlertKind::Unhealthy)
                },
                "crash_loop",
                Action::None,
            ),
            (
                Facts {
                    memory_limit_bytes: Some(32 << 20),
                    ..facts(AlertKind::OomKilled)
                },
                "oom_kill",
                Action::Restart,
            ),
            (
                Facts {
                    oom_killed: true,
                    exit_code: Some(137),
                    ..facts(AlertKind::Died)
                },
                "oom_kill",
                Action::Restart,
            ),
            (
                facts(AlertKind::Oom),
                "oom_in_running_container",
                Action::None,
            ),
            (
                Facts {
                    exit_code: Some(0),
                    ..facts(AlertKind::Died)
                },
                "clean_exit",
                Action::None,
            ),
            (
                Facts {
                    exit_code: Some(3),
                    ..facts(AlertKind::Died)
                },
                "crash",
                Action::Restart,
            ),
            (
                Facts {
                    exit_code: Some(137),
                    ..facts(AlertKind::Died)
                },
                "crash",
                Action::Restart,
            ),
            (
                facts(AlertKind::Unhealthy),
                "failing_health_check",
                Action::Restart,
            ),
            (
                Facts {
                    cpu_trend: Trend::Rising,
                    ..facts(AlertKind::CpuHigh)
                },
                "cpu_runaway",
                Action::Restart,
            ),
            (
                Facts {
                    cpu_trend: Trend::Flat,
                    ..facts(AlertKind::CpuHigh)
                },
                "cpu_sustained",
                Action::None,
            ),
            (
                Facts {
                    memory_trend: Trend::Rising,
                    ..facts(AlertKind::MemoryHigh)
                },
                "memory_leak",
                Action::Restart,
            ),
            (
                Facts {
                    memory_trend: Trend::Flat,
                    ..facts(AlertKind::MemoryHigh)
                },
                "memory_high",
                Action::None,
            ),
            (facts(AlertKind::Anomaly), "anomaly", Action::None),
            (
                Facts {
                    host_kind: Some(HostAlertKind::DiskPressure),
                    ..Facts::default()
                },
                "disk_pressure",
                Action::Cleanup,
            ),
            (
                Facts {
                    host_kind: Some(HostAlertKind::MemoryPressure),
                    ..Facts::default()
                },
                "host_pressure",
                Action::None,
            ),
            (Facts::default(), "unknown", Action::None),
        ];
        for (f, rule, action) in cases {
            let v = decide(&f);
            assert_eq!((v.rule, v.action), (rule, action), "{f:?}");
            assert!((0.0..=1.0).contains(&v.confidence));
            assert!(!v.root_cause.is_empty());
            assert!(v.reason.contains(rule));
        }
    }

    #[test]
    fn verdict_details() {
        let v = decide(&Facts {
            memory_limit_bytes: Some(32 << 20),
            ..facts(AlertKind::OomKilled)
        });
        assert!(v.root_cause.contains("32 MiB"), "{}", v.root_cause);
        assert!(!v.false_alarm);
        let v = decide(&Facts {
            user_initiated: true,
            ..facts(AlertKind::Stopped)
        });
        assert!(v.false_alarm && v.confidence == 1.0);
        let v = decide(&Facts {
            restart_count: 9,
            ..facts(AlertKind::Died)
        });
        assert!(v.escalate);
        let v = decide(&Facts {
            health_output: Some("db down\n".into()),
            ..facts(AlertKind::Unhealthy)
        });
        assert_eq!(v.root_cause, "the health check keeps failing: db down");
    }

    /// The binding column, row by row: exactly the safety verdicts bind, and every rule that
    /// escalates is one of them.
    #[test]
    fn binding_rules() {
        let binding: Vec<&str> = RULES.iter().filter(|r| r.binding).map(|r| r.name).collect();
        assert_eq!(binding, ["user_initiated", "crash_loop", "host_pressure"]);
        for r in RULES {
            assert!(
                !r.escalate || r.binding,
                "{} escalates but does not bind",
                r.name
            );
        }
        // The verdict carries its rule's column.
        for (f, want) in [
            (
                Facts {
                    user_initiated: true,
                    ..facts(AlertKind::Stopped)
                },
                true,
            ),
            (
                Facts {
                    restart_count: 9,
                    ..facts(AlertKind::Died)
                },
                true,
            ),
            (
                Facts {
                    host_kind: Some(HostAlertKind::CpuPressure),
                    ..Facts::default()
                },
                true,
            ),
            (facts(AlertKind::Died), false),
            (facts(AlertKind::MemoryHigh), false),
            (Facts::default(), false),
        ] {
            assert_eq!(decide(&f).binding, want, "{f:?}");
        }
    }

    #[test]
    fn trends() {
        assert_eq!(Trend::of(&[1.0, 2.0], 1.0), Trend::Unknown);
        assert_eq!(Trend::of(&[10.0, 20.0, 30.0, 40.0], 5.0), Trend::Rising);
        assert_eq!(Trend::of(&[40.0, 30.0, 20.0, 10.0], 5.0), Trend::Falling);
        assert_eq!(Trend::of(&[50.0, 52.0, 49.0, 51.0], 5.0), Trend::Flat);
        // Noise around a rise is still a rise.
        assert_eq!(
            Trend::of(&[10.0, 9.0, 15.0, 14.0, 22.0, 20.0, 28.0], 5.0),
            Trend::Rising
        );
    }
}
