//! Prometheus metrics: the families every agent exports, plus a registry each agent adds its own
//! to before serving `/metrics`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set for per-channel families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

impl ChannelLabel {
    pub fn new(channel: &str) -> ChannelLabel {
        ChannelLabel {
            channel: channel.to_owned(),
        }
    }
}

/// Longest label value exported, in characters; a longer one is cut and ends in `~`, so a
/// container's labels cannot make a scrape grow without bound.
pub const LABEL_VALUE_MAX: usize = 128;

/// The labels of every per-container series: who the container is, as a person looking at a
/// graph knows it. Values are cut at [`LABEL_VALUE_MAX`]; absent compose labels are empty.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ContainerLabels {
    pub host: String,
    pub container: String,
    pub compose_project: String,
    pub compose_service: String,
    pub image: String,
}

impl ContainerLabels {
    /// `labels` is looked up for `com.docker.compose.project` and `com.docker.compose.service`.
    pub fn new<'a>(
        host: &str,
        name: &str,
        image: &str,
        label: impl Fn(&str) -> Option<&'a str>,
    ) -> ContainerLabels {
        ContainerLabels {
            host: bounded(host),
            container: bounded(name),
            compose_project: bounded(label("com.docker.compose.project").unwrap_or_default()),
            compose_service: bounded(label("com.docker.compose.service").unwrap_or_default()),
            image: bounded(image),
        }
    }

    /// The labels of the container a message names, on `host`.
    pub fn of(host: &str, c: &crate::events::ContainerRef) -> ContainerLabels {
        ContainerLabels::new(host, &c.name, &c.image, |k| {
            c.labels.get(k).map(String::as_str)
        })
    }
}

/// `value`, cut to [`LABEL_VALUE_MAX`] characters.
fn bounded(value: &str) -> String {
    if value.chars().nth(LABEL_VALUE_MAX).is_none() {
        return value.to_owned();
    }
    let at = value
        .char_indices()
        .nth(LABEL_VALUE_MAX - 1)
        .map_or(value.len(), |(at, _)| at);
    format!("{}~", &value[..at])
}

/// The metrics every agent has. Cheap to clone (everything inside is an `Arc`).
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    /// Envelopes read from a stream and handed to a handler.
    pub events_in: Family<ChannelLabel, Counter>,
    /// Envelopes published.
    pub events_out: Family<ChannelLabel, Counter>,
    /// Handler failures (the entry stays pending and is retried, or dead-lettered).
    pub handler_errors: Family<ChannelLabel, Counter>,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: Family<ChannelLabel, Counter>,
    /// Envelopes dropped because the outbox was full while Redis was unreachable.
    pub outbox_dropped: Counter,
    /// Envelopes waiting in the outbox.
    pub outbox_depth: Gauge,
    /// 1 when the last Redis operation succeeded.
    pub redis_up: Gauge,
    /// 1 when the last Docker call succeeded (agents that use Docker).
    pub docker_up: Gauge,
    /// Redis's `used_memory` at the last look (bytes).
    pub redis_used_memory: Gauge,
    /// Redis's `maxmemory` at the last look (bytes; 0: no limit).
    pub redis_max_memory: Gauge,
    /// Bytes of envelopes waiting in the outbox.
    pub outbox_bytes: Gauge,
    /// Handlers that panicked on an entry (the entry is dead-lettered, the agent goes on).
    pub handler_panics: Family<ChannelLabel, Counter>,
}

impl AgentMetrics {
    /// Registers the common families under `hemostat_`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hemostat_events_in",
            "Envelopes read from a stream and handed to a handler",
            self.events_in.clone(),
        );
        registry.register(
            "hemostat_events_out",
            "Envelopes published",
            self.events_out.clone(),
        );
        registry.register(
            "hemostat_handler_errors",
            "Handler failures",
            self.handler_errors.clone(),
        );
        registry.register(
            "hemostat_dead_lettered",
            "Entries moved to the dead-letter stream",
            self.dead_lettered.clone(),
        );
        registry.register(
            "hemostat_outbox_dropped",
            "Envelopes dropped because the outbox was full",
            self.outbox_dropped.clone(),
        );
        registry.register(
            "hemostat_redis_used_memory_bytes",
            "Redis used_memory at the last look",
            self.redis_used_memory.clone(),
        );
        registry.register(
            "hemostat_redis_max_memory_bytes",
            "Redis maxmemory at the last look (0: no limit)",
            self.redis_max_memory.clone(),
        );
        registry.register(
            "hemostat_outbox_bytes",
            "Bytes of envelopes waiting to be published",
            self.outbox_bytes.clone(),
        );
        registry.register(
            "hemostat_handler_panics",
            "Handlers that panicked on an entry (dead-lettered)",
            self.handler_panics.clone(),
        );
        registry.register(
            "hemostat_outbox_depth",
            "Envelopes waiting to be published",
            self.outbox_depth.clone(),
        );
        registry.register(
            "hemostat_redis_up",
            "1 when Redis answered the last operation",
            self.redis_up.clone(),
        );
        registry.register(
            "hemostat_docker_up",
            "1 when Docker answered the last call",
            self.docker_up.clone(),
        );
    }
}

/// A registry behind a lock, so agents can add their own families after start-up.
#[derive(Debug, Default)]
pub struct SharedRegistry(Mutex<Registry>);

impl SharedRegistry {
    pub fn with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.with(|r| prometheus_client::encoding::text::encode(&mut out, r))
            .map(|()| out)
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_exported_with_labels() {
        let m = AgentMetrics::default();
        let reg = SharedRegistry::default();
        reg.with(|r| m.register(r));
        m.events_out
            .get_or_create(&ChannelLabel::new("hemostat:health_alert"))
            .inc();
        m.redis_up.set(1);
        let text = reg.encode();
        assert!(
            text.contains("hemostat_events_out_total{channel=\"hemostat:health_alert\"} 1"),
            "{text}"
        );
        assert!(text.contains("hemostat_redis_up 1"), "{text}");
    }

    #[test]
    fn container_labels_are_bounded_and_read_compose_labels() {
        let long = "x".repeat(500);
        let l = ContainerLabels::new("h1", "web-1", &long, |k| match k {
            "com.docker.compose.project" => Some("shop"),
            _ => None,
        });
        assert_eq!(l.compose_project, "shop");
        assert_eq!(l.compose_service, "");
        assert_eq!(l.image.chars().count(), LABEL_VALUE_MAX);
        assert!(l.image.ends_with('~'));
        let short = ContainerLabels::new("h1", "é".repeat(LABEL_VALUE_MAX).as_str(), "", |_| None);
        assert_eq!(
            short.container,
            "é".repeat(LABEL_VALUE_MAX),
            "exactly the limit is kept"
        );
    }
}
