//! The watched containers' state as Prometheus series, from what the monitor already reads:
//! the event stream (instant) and each stats round's listing (a reconciliation that also
//! notices what an event gap hid). Every series carries [`ContainerLabels`]; a container that
//! is removed, or leaves the scope, loses all its series at once, so the label set is bounded
//! by the containers that exist (and by [`MAX_CONTAINERS`]).
//!
//! Series, per container:
//! - `hemostat_container_running` 1 while its process runs (not paused), else 0
//! - `hemostat_container_paused` 1 while a person has it paused
//! - `hemostat_container_health{status}` 1 for its health-check status (`healthy`,
//!   `unhealthy`, `starting`, or `none` without a check), 0 for the others
//! - `hemostat_container_docker_restarts_total` restarts made by Docker's restart policy
//!   (Docker's `RestartCount`, as last inspected)
//! - `hemostat_container_oom_kills_total` OOM kills the engine reported (`oom` events)
//! - `hemostat_container_detection_seconds` histogram: Docker's event → the alert handed to the
//!   bus, for deaths, OOM kills and failing checks seen on the event stream

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use hemostat_common::metrics::ContainerLabels;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::detect::{DockerEvent, Listed};

/// Most containers exported at once; past it, new containers get no series (and a warning)
/// until others are removed. At about 20 series per container this caps a scrape at 40,000
/// series.
pub const MAX_CONTAINERS: usize = 2_000;

/// Health-check statuses, one series each per container.
pub const HEALTH: [&str; 4] = ["healthy", "unhealthy", "starting", "none"];

/// Detection latency buckets, seconds: the target is 0.1 s at p99.
const DETECTION_BUCKETS: [f64; 9] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    #[prometheus(flatten)]
    pub container: ContainerLabels,
    pub status: String,
}

type HistogramFamily = Family<ContainerLabels, Histogram, fn() -> Histogram>;

fn detection_histogram() -> Histogram {
    Histogram::new(DETECTION_BUCKETS)
}

#[derive(Debug)]
struct Tracked {
    labels: ContainerLabels,
    /// Docker's `RestartCount` at the last inspect; `None` until the first.
    restart_count: Option<i64>,
}

/// The per-container series of one host.
#[derive(Debug)]
pub struct Fleet {
    host: String,
    known: Mutex<HashMap<String, Tracked>>,
    full_warned: std::sync::atomic::AtomicBool,
    running: Family<ContainerLabels, Gauge>,
    paused: Family<ContainerLabels, Gauge>,
    health: Family<HealthLabels, Gauge>,
    docker_restarts: Family<ContainerLabels, Counter>,
    oom_kills: Family<ContainerLabels, Counter>,
    detection: HistogramFamily,
    exported: Gauge,
}

impl Fleet {
    pub fn new(host: &str) -> Fleet {
        Fleet {
            host: host.to_owned(),
            known: Mutex::default(),
            full_warned: std::sync::atomic::AtomicBool::new(false),
            running: Family::default(),
            paused: Family::default(),
            health: Family::default(),
            docker_restarts: Family::default(),
            oom_kills: Family::default(),
            detection: Family::new_with_constructor(detection_histogram),
            exported: Gauge::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hemostat_container_running",
            "1 while the container's process runs (not paused), else 0",
            self.running.clone(),
        );
        r.register(
            "hemostat_container_paused",
            "1 while the container is paused",
            self.paused.clone(),
        );
        r.register(
            "hemostat_container_health",
            "1 for the container's health-check status (none: no check), 0 for the others",
            self.health.clone(),
        );
        r.register(
            "hemostat_container_docker_restarts",
            "Restarts made by Docker's restart policy (Docker's RestartCount)",
            self.docker_restarts.clone(),
        );
        r.register(
            "hemostat_container_oom_kills",
            "OOM kills the engine reported in the container",
            self.oom_kills.clone(),
        );
        r.register(
            "hemostat_container_detection_seconds",
            "Docker's event of a death, OOM kill or failing check to the alert handed to the bus",
            self.detection.clone(),
        );
        r.register(
            "hemostat_monitor_fleet_containers",
            "Containers with series exported (at most 2000)",
            self.exported.clone(),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The labels of container `id`, tracking it first if it is new (`None` when it is new and
    /// [`MAX_CONTAINERS`] are tracked already).
    fn track(
        &self,
        known: &mut HashMap<String, Tracked>,
        id: &str,
        labels: ContainerLabels,
    ) -> Option<ContainerLabels> {
        if let Some(t) = known.get_mut(id) {
            if t.labels != labels {
                // Renamed: the old name's series go, the new name's start.
                self.remove_series(&t.labels);
                t.labels = labels.clone();
                t.restart_count = None;
                self.start_series(&labels);
            }
            return Some(labels);
        }
        if known.len() >= MAX_CONTAINERS {
            if !self
                .full_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    max = MAX_CONTAINERS,
                    "too many containers to export per-container metrics for; new ones get none"
                );
            }
            return None;
        }
        known.insert(
            id.to_owned(),
            Tracked {
                labels: labels.clone(),
                restart_count: None,
            },
        );
        self.start_series(&labels);
        self.exported.set(known.len() as i64);
        Some(labels)
    }

    /// Every series a container has from the start, so a query finds zeros, not nothing.
    fn start_series(&self, l: &ContainerLabels) {
        self.running.get_or_create_owned(l);
        self.paused.get_or_create_owned(l);
        self.docker_restarts.get_or_create_owned(l);
        self.oom_kills.get_or_create_owned(l);
        self.detection.get_or_create_owned(l);
        self.set_health(l, None);
    }

    fn remove_series(&self, l: &ContainerLabels) {
        self.running.remove(l);
        self.paused.remove(l);
        self.docker_restarts.remove(l);
        self.oom_kills.remove(l);
        self.detection.remove(l);
        for status in HEALTH {
            self.health.remove(&HealthLabels {
                container: l.clone(),
                status: status.to_owned(),
            });
        }
    }

    fn set_health(&self, l: &ContainerLabels, status: Option<&str>) {
        let status = status.filter(|s| HEALTH.contains(s)).unwrap_or("none");
        for s in HEALTH {
            self.health
                .get_or_create(&HealthLabels {
                    container: l.clone(),
                    status: s.to_owned(),
                })
                .set(i64::from(s == status));
        }
    }

    fn set_state(&self, l: &ContainerLabels, state: &str) {
        self.running
            .get_or_create(l)
            .set(i64::from(state == "running"));
        self.paused
            .get_or_create(l)
            .set(i64::from(state == "paused"));
    }

    /// A stats round's listing of every container in scope (running or not): sets each one's
    /// state and health, and removes the series of every container no longer listed.
    pub fn listed(&self, all: &[Listed]) {
        let mut known = self.lock();
        let live: HashSet<&str> = all.iter().map(|l| l.id.as_str()).collect();
        let gone: Vec<String> = known
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(t) = known.remove(&id) {
                self.remove_series(&t.labels);
            }
        }
        for l in all {
            let labels = ContainerLabels::new(&self.host, &l.name, &l.image, |k| {
                l.labels.get(k).map(String::as_str)
            });
            if let Some(labels) = self.track(&mut known, &l.id, labels) {
                self.set_state(&labels, &l.state);
                self.set_health(&labels, l.health.as_deref());
            }
        }
        self.exported.set(known.len() as i64);
    }

    /// One event of a container in scope (already scrubbed).
    pub fn event(&self, ev: &DockerEvent) {
        let mut known = self.lock();
        if ev.action == "destroy" {
            if let Some(t) = known.remove(&ev.id) {
                self.remove_series(&t.labels);
            }
            self.exported.set(known.len() as i64);
            return;
        }
        let image = ev.attributes.get("image").map(String::as_str);
        let labels = ContainerLabels::new(&self.host, ev.name(), image.unwrap_or_default(), |k| {
            ev.attributes.get(k).map(String::as_str)
        });
        let Some(labels) = self.track(&mut known, &ev.id, labels) else {
            return;
        };
        match ev.action.as_str() {
            "start" | "unpause" | "restart" => self.set_state(&labels, "running"),
            "die" => self.set_state(&labels, "exited"),
            "pause" => self.set_state(&labels, "paused"),
            "oom" => {
                self.oom_kills.get_or_create(&labels).inc();
            }
            action => {
                if let Some(status) = action.strip_prefix("health_status: ") {
                    self.set_health(&labels, Some(status.trim()));
                }
            }
        }
    }

    /// Docker's `RestartCount` from an inspect of container `id`: the counter grows by what it
    /// grew since the last inspect (the first one counts it all).
    pub fn restart_count(&self, id: &str, count: i64) {
        let mut known = self.lock();
        let Some(t) = known.get_mut(id) else { return };
        let grew = count - t.restart_count.unwrap_or(0);
        if grew > 0 {
            self.docker_restarts
                .get_or_create(&t.labels)
                .inc_by(grew as u64);
        }
        // Docker counts from zero again when a person starts it; growth is counted from there.
        t.restart_count = Some(count);
    }

    /// How long detecting a problem of container `id` took.
    pub fn detected(&self, id: &str, seconds: f64) {
        let known = self.lock();
        if let Some(t) = known.get(id) {
            self.detection
                .get_or_create(&t.labels)
                .observe(seconds.max(0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn listed(id: &str, name: &str, state: &str, health: Option<&str>) -> Listed {
        Listed {
            id: id.into(),
            name: name.into(),
            image: "patient:1".into(),
            labels: [("com.docker.compose.project".to_owned(), "shop".to_owned())].into(),
            state: state.into(),
            exit_code: None,
            health: health.map(str::to_owned),
        }
    }

    fn event(id: &str, name: &str, action: &str) -> DockerEvent {
        DockerEvent {
            id: id.into(),
            action: action.into(),
            attributes: [
                ("name".to_owned(), name.to_owned()),
                ("image".to_owned(), "patient:1".to_owned()),
                ("com.docker.compose.project".to_owned(), "shop".to_owned()),
            ]
            .into(),
            time_nano: 0,
        }
    }

    fn scrape(f: &Fleet) -> String {
        let mut r = Registry::default();
        f.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    fn line<'a>(text: &'a str, metric: &str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(&format!("container=\"{name}\"")))
            .collect()
    }

    #[test]
    fn state_health_restarts_and_ooms_follow_listings_and_events() {
        let f = Fleet::new("h1");
        f.listed(&[listed("a", "web", "running", Some("healthy"))]);
        let t = scrape(&f);
        assert!(
            t.contains(
                "hemostat_container_running{host=\"h1\",container=\"web\",compose_project=\"shop\",compose_service=\"\",image=\"patient:1\"} 1"
            ),
            "{t}"
        );
        let healthy = line(&t, "hemostat_container_health{", "web");
        assert_eq!(healthy.len(), 4, "{t}");
        assert_eq!(healthy.iter().filter(|l| l.ends_with(" 1")).count(), 1);
        assert!(
            healthy
                .iter()
                .any(|l| l.contains("status=\"healthy\"") && l.ends_with(" 1"))
        );

        f.event(&event("a", "web", "health_status: unhealthy"));
        f.event(&event("a", "web", "oom"));
        f.event(&event("a", "web", "die"));
        f.restart_count("a", 2);
        f.restart_count("a", 3);
        f.restart_count("a", 0); // a person's start: counted from zero again
        f.restart_count("a", 1);
        f.detected("a", 0.04);
        let t = scrape(&f);
        assert!(
            line(&t, "hemostat_container_running{", "web")[0].ends_with(" 0"),
            "{t}"
        );
        assert!(
            line(&t, "hemostat_container_health{", "web")
                .iter()
                .any(|l| l.contains("status=\"unhealthy\"") && l.ends_with(" 1"))
        );
        assert!(line(&t, "hemostat_container_oom_kills_total{", "web")[0].ends_with(" 1"));
        assert!(
            line(&t, "hemostat_container_docker_restarts_total{", "web")[0].ends_with(" 4"),
            "{t}"
        );
        assert!(line(&t, "hemostat_container_detection_seconds_count{", "web")[0].ends_with(" 1"));
        assert!(
            line(&t, "hemostat_container_detection_seconds_bucket{", "web")
                .iter()
                .any(|l| l.contains("le=\"0.05\"") && l.ends_with(" 1"))
        );
    }

    #[test]
    fn a_removed_container_loses_every_series() {
        let f = Fleet::new("h1");
        f.listed(&[
            listed("a", "web", "running", None),
            listed("b", "db", "running", None),
        ]);
        f.event(&event("a", "web", "oom"));
        f.event(&event("a", "web", "destroy"));
        let t = scrape(&f);
        assert!(!t.contains("container=\"web\""), "{t}");
        assert!(t.contains("container=\"db\""));
        // Gone from a listing: the same.
        f.listed(&[]);
        let t = scrape(&f);
        assert!(!t.contains("container=\""), "{t}");
        assert!(t.contains("hemostat_monitor_fleet_containers 0"), "{t}");
    }

    /// The scrape's size per container, as docs/API_PROTOCOL.md states it.
    #[test]
    fn a_container_costs_a_bounded_scrape() {
        let f = Fleet::new("docker-host-01");
        let all: Vec<Listed> = (0..100)
            .map(|i| {
                listed(
                    &format!("id{i}"),
                    &format!("shop-checkout-worker-{i:03}"),
                    "running",
                    None,
                )
            })
            .collect();
        f.listed(&all);
        for i in 0..100 {
            f.detected(&format!("id{i}"), 0.05);
        }
        let per = scrape(&f).len() / 100;
        eprintln!("monitor scrape: {per} bytes per container");
        assert!(per < 8_000, "{per} bytes per container");
    }

    #[test]
    fn a_rename_moves_the_series_and_the_count_is_capped() {
        let f = Fleet::new("h1");
        f.listed(&[listed("a", "web", "running", None)]);
        f.event(&event("a", "web-2", "rename"));
        let t = scrape(&f);
        assert!(!t.contains("container=\"web\""), "{t}");
        assert!(t.contains("container=\"web-2\""), "{t}");

        let many: Vec<Listed> = (0..MAX_CONTAINERS + 10)
            .map(|i| listed(&format!("id{i}"), &format!("c{i}"), "running", None))
            .collect();
        f.listed(&many);
        let t = scrape(&f);
        assert!(t.contains(&format!(
            "hemostat_monitor_fleet_containers {MAX_CONTAINERS}"
        )));
        assert_eq!(
            t.lines()
                .filter(|l| l.starts_with("hemostat_container_running{"))
                .count(),
            MAX_CONTAINERS
        );
    }
}
