//! What the responder did to each container, as Prometheus series carrying
//! [`ContainerLabels`]. Counted when a decision is reported, and a report is published exactly
//! once per request whichever replica makes it, so a taken-over request is counted once.
//!
//! Series, per container the responder has decided on (or whose breaker is open):
//! - `hemostat_container_remediations_total{action,outcome}` decisions reported
//! - `hemostat_container_hemostat_restarts_total` restarts (and starts) hemostat made: the
//!   Docker call was made (not a dry run, not refused)
//! - `hemostat_container_breaker_open` 1 while the container's circuit breaker is open
//! - `hemostat_container_recovery_seconds` histogram: the problem began (the death, the first
//!   failing check) → hemostat's restart verified it running (and healthy)
//!
//! A container that is removed, or leaves the scope, loses all of them at the next
//! [`REFRESH`] (see [`Fleet::refresh`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hemostat_common::events::{Action, ContainerRef, Outcome};
use hemostat_common::metrics::ContainerLabels;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How often breakers are re-read and removed containers' series dropped.
pub const REFRESH: Duration = Duration::from_secs(10);

/// Most containers with series at once (beyond it, new ones get none until others go).
pub const MAX_CONTAINERS: usize = 2_000;

const RECOVERY_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

const ACTIONS: [Action; 5] = [
    Action::Restart,
    Action::Stop,
    Action::Start,
    Action::Cleanup,
    Action::None,
];

const OUTCOMES: [Outcome; 5] = [
    Outcome::Success,
    Outcome::Failed,
    Outcome::Rejected,
    Outcome::Skipped,
    Outcome::Superseded,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemediationLabels {
    #[prometheus(flatten)]
    pub container: ContainerLabels,
    pub action: String,
    pub outcome: String,
}

type HistogramFamily = Family<ContainerLabels, Histogram, fn() -> Histogram>;

fn recovery_histogram() -> Histogram {
    Histogram::new(RECOVERY_BUCKETS)
}

/// One decision, as the series see it.
#[derive(Debug, Clone, Copy)]
pub struct Decided {
    pub action: Action,
    pub outcome: Outcome,
    /// The Docker call was made (the action reached the engine).
    pub acted: bool,
    /// Seconds from the problem's start to the verified recovery, for a verified restart.
    pub recovered_after: Option<f64>,
}

#[derive(Debug)]
struct Tracked {
    labels: ContainerLabels,
    touched: Instant,
}

#[derive(Debug)]
pub struct Fleet {
    host: String,
    known: Mutex<HashMap<String, Tracked>>,
    remediations: Family<RemediationLabels, Counter>,
    restarts: Family<ContainerLabels, Counter>,
    breaker_open: Family<ContainerLabels, Gauge>,
    recovery: HistogramFamily,
}

impl Fleet {
    pub fn new(host: &str) -> Fleet {
        Fleet {
            host: host.to_owned(),
            known: Mutex::default(),
            remediations: Family::default(),
            restarts: Family::default(),
            breaker_open: Family::default(),
            recovery: Family::new_with_constructor(recovery_histogram),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hemostat_container_remediations",
            "Remediation decisions reported, by action and outcome",
            self.remediations.clone(),
        );
        r.register(
            "hemostat_container_hemostat_restarts",
            "Restarts (and starts) of the container that hemostat made",
            self.restarts.clone(),
        );
        r.register(
            "hemostat_container_breaker_open",
            "1 while the container's circuit breaker is open",
            self.breaker_open.clone(),
        );
        r.register(
            "hemostat_container_recovery_seconds",
            "From the problem's start to hemostat's restart verified running (and healthy)",
            self.recovery.clone(),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container's labels, tracked from now on (`None` past [`MAX_CONTAINERS`]).
    fn track(
        &self,
        known: &mut HashMap<String, Tracked>,
        name: &str,
        labels: ContainerLabels,
    ) -> Option<ContainerLabels> {
        if let Some(t) = known.get_mut(name) {
            if t.labels != labels {
                // Recreated under the same name from another image: a container of its own.
                self.remove_series(&t.labels);
                t.labels = labels.clone();
                self.start_series(&labels);
            }
            t.touched = Instant::now();
            return Some(labels);
        }
        if known.len() >= MAX_CONTAINERS {
            return None;
        }
        known.insert(
            name.to_owned(),
            Tracked {
                labels: labels.clone(),
                touched: Instant::now(),
            },
        );
        self.start_series(&labels);
        Some(labels)
    }

    fn start_series(&self, l: &ContainerLabels) {
        self.restarts.get_or_create_owned(l);
        self.breaker_open.get_or_create_owned(l);
        self.recovery.get_or_create_owned(l);
    }

    fn remove_series(&self, l: &ContainerLabels) {
        self.restarts.remove(l);
        self.breaker_open.remove(l);
        self.recovery.remove(l);
        for action in ACTIONS {
            for outcome in OUTCOMES {
                self.remediations
                    .remove(&remediation_labels(l, action, outcome));
            }
        }
    }

    /// A decision about container `c`, reported.
    pub fn decided(&self, c: &ContainerRef, d: Decided) {
        let mut known = self.lock();
        let Some(l) = self.track(&mut known, &c.name, ContainerLabels::of(&self.host, c)) else {
            return;
        };
        self.remediations
            .get_or_create(&remediation_labels(&l, d.action, d.outcome))
            .inc();
        if d.acted && matches!(d.action, Action::Restart | Action::Start) {
            self.restarts.get_or_create(&l).inc();
        }
        if let Some(s) = d.recovered_after {
            self.recovery.get_or_create(&l).observe(s.max(0.0));
        }
    }

    /// Container `c`'s breaker opened just now.
    pub fn breaker_opened(&self, c: &ContainerRef) {
        let mut known = self.lock();
        if let Some(l) = self.track(&mut known, &c.name, ContainerLabels::of(&self.host, c)) {
            self.breaker_open.get_or_create(&l).set(1);
        }
    }

    /// The periodic look: `present` is every container in scope on this host by name, with its
    /// labels; `open` the names whose breaker key exists. Containers no longer present lose
    /// their series (unless a decision touched them since `present` was listed); breakers
    /// follow the keys (expired or reset: 0).
    pub fn refresh(
        &self,
        present: &HashMap<String, ContainerLabels>,
        open: &HashSet<String>,
        listed_at: Instant,
    ) {
        let mut known = self.lock();
        let gone: Vec<String> = known
            .iter()
            .filter(|(name, t)| !present.contains_key(*name) && t.touched < listed_at)
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(t) = known.remove(&name) {
                self.remove_series(&t.labels);
            }
        }
        for name in open {
            if !known.contains_key(name)
                && let Some(l) = present.get(name)
            {
                self.track(&mut known, name, l.clone());
            }
        }
        for (name, t) in known.iter() {
            self.breaker_open
                .get_or_create(&t.labels)
                .set(i64::from(open.contains(name)));
        }
    }
}

fn remediation_labels(l: &ContainerLabels, action: Action, outcome: Outcome) -> RemediationLabels {
    RemediationLabels {
        container: l.clone(),
        action: crate::guards::verb(action).to_owned(),
        outcome: crate::outcome_name(outcome).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(name: &str) -> ContainerRef {
        ContainerRef {
            id: format!("{name}-id"),
            name: name.into(),
            image: "patient:1".into(),
            labels: [("com.docker.compose.service".to_owned(), "api".to_owned())].into(),
        }
    }

    fn scrape(f: &Fleet) -> String {
        let mut r = Registry::default();
        f.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    fn value(text: &str, prefix: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix) && l.contains(&format!("container=\"{name}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn decisions_restarts_and_recoveries_are_counted_per_container() {
        let f = Fleet::new("h1");
        let restarted = Decided {
            action: Action::Restart,
            outcome: Outcome::Success,
            acted: true,
            recovered_after: Some(1.5),
        };
        f.decided(&c("web"), restarted);
        // A dry run or a refusal: a decision, not a restart.
        f.decided(
            &c("web"),
            Decided {
                outcome: Outcome::Skipped,
                acted: false,
                recovered_after: None,
                ..restarted
            },
        );
        let t = scrape(&f);
        assert_eq!(
            value(&t, "hemostat_container_hemostat_restarts_total{", "web"),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            value(&t, "hemostat_container_recovery_seconds_count{", "web"),
            Some(1.0)
        );
        assert_eq!(
            value(&t, "hemostat_container_recovery_seconds_sum{", "web"),
            Some(1.5)
        );
        assert!(
            t.contains("action=\"restart\",outcome=\"success\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("action=\"restart\",outcome=\"skipped\"} 1"),
            "{t}"
        );
        assert!(t.contains("compose_service=\"api\""), "{t}");
    }

    #[test]
    fn breakers_follow_their_keys_and_removed_containers_lose_their_series() {
        let f = Fleet::new("h1");
        f.breaker_opened(&c("web"));
        let t = scrape(&f);
        assert_eq!(
            value(&t, "hemostat_container_breaker_open{", "web"),
            Some(1.0)
        );
        let labels = |n: &str| ContainerLabels::of("h1", &c(n));
        let present: HashMap<String, ContainerLabels> = [
            ("web".to_owned(), labels("web")),
            ("db".to_owned(), labels("db")),
        ]
        .into();
        // The key expired: closed. A breaker found open for a container not seen before
        // (opened before this process started) gets its series.
        f.refresh(&present, &["db".to_owned()].into(), Instant::now());
        let t = scrape(&f);
        assert_eq!(
            value(&t, "hemostat_container_breaker_open{", "web"),
            Some(0.0),
            "{t}"
        );
        assert_eq!(
            value(&t, "hemostat_container_breaker_open{", "db"),
            Some(1.0),
            "{t}"
        );
        // web is removed.
        let present: HashMap<String, ContainerLabels> = [("db".to_owned(), labels("db"))].into();
        f.refresh(&present, &HashSet::new(), Instant::now());
        let t = scrape(&f);
        assert!(!t.contains("container=\"web\""), "{t}");
        assert_eq!(
            value(&t, "hemostat_container_breaker_open{", "db"),
            Some(0.0)
        );
    }

    /// The scrape's size per container with every action and outcome seen, as
    /// docs/API_PROTOCOL.md states it.
    #[test]
    fn a_container_costs_a_bounded_scrape() {
        let f = Fleet::new("docker-host-01");
        for i in 0..100 {
            let c = c(&format!("shop-checkout-worker-{i:03}"));
            for action in ACTIONS {
                for outcome in OUTCOMES {
                    f.decided(
                        &c,
                        Decided {
                            action,
                            outcome,
                            acted: true,
                            recovered_after: Some(3.0),
                        },
                    );
                }
            }
        }
        let per = scrape(&f).len() / 100;
        eprintln!("responder scrape: {per} bytes per container");
        assert!(per < 16_000, "{per} bytes per container");
    }

    #[test]
    fn a_decision_after_the_listing_keeps_a_new_container() {
        let f = Fleet::new("h1");
        let listed_at = Instant::now();
        f.decided(
            &c("new"),
            Decided {
                action: Action::Restart,
                outcome: Outcome::Failed,
                acted: true,
                recovered_after: None,
            },
        );
        f.refresh(&HashMap::new(), &HashSet::new(), listed_at);
        assert!(scrape(&f).contains("container=\"new\""));
    }
}
