//! The wire protocol: the envelope, one typed payload per event kind, and every channel and
//! stream name. This is the only module whose types are serialized onto the bus.
//!
//! Architecture invariant: channel and stream names are spelled here and nowhere else.
//! `docs/API_PROTOCOL.md` documents every payload with a JSON example, and a unit test below
//! decodes each example from that file, so the document cannot drift from the code.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Version of the envelope and payload shapes. Bumped only for incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Where messages that could not be decoded, or kept failing, are parked with the reason.
pub const DEAD_LETTER_STREAM: &str = "hemostat:stream:dead_letter";
/// Every responder decision, including refusals (written by the responder).
pub const AUDIT_STREAM: &str = "hemostat:stream:audit";
/// Prefix of the per-instance liveness keys: `hemostat:heartbeat:<agent>:<instance>`, with a TTL.
pub const HEARTBEAT_KEY_PREFIX: &str = "hemostat:heartbeat:";
/// The responder's "reported" marker of a request (`hemostat:seen:responder:<host>:<request
/// id>`). It is set in the same atomic step that publishes the request's
/// `remediation_complete`, so while it exists the request is finished, whether or not a reader
/// has seen the report yet.
pub fn responder_reported_key(host: &str, request_id: &str) -> String {
    format!("hemostat:seen:responder:{host}:{request_id}")
}
/// The field of a stream entry that holds the envelope's JSON.
pub const STREAM_FIELD_ENVELOPE: &str = "envelope";
/// The field of a stream entry that holds the envelope's `event_type`, for cheap filtering.
pub const STREAM_FIELD_EVENT_TYPE: &str = "event_type";

/// A public pub/sub channel, each mirrored by a Redis Stream of the same short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// monitor → analyzer: a container or host problem, a person's action, or a recovery.
    HealthAlert,
    /// analyzer → responder: what to do to which container, and why.
    RemediationNeeded,
    /// analyzer → alert, dashboard: why no action was taken.
    FalseAlarm,
    /// responder → alert, dashboard: what was done and whether it worked.
    RemediationComplete,
    /// any → alert: escalations that need a human.
    Alerts,
    /// monitor → dashboard: periodic container and host samples.
    Metrics,
    /// every agent: liveness.
    Heartbeat,
    /// dashboard → responder: a person asks for an action now ("restart now"); it passes the
    /// same guards as any other request.
    PersonRequest,
}

impl Channel {
    /// Every channel, in the order of the table in DESIGN.md.
    pub const ALL: [Channel; 8] = [
        Channel::HealthAlert,
        Channel::RemediationNeeded,
        Channel::FalseAlarm,
        Channel::RemediationComplete,
        Channel::Alerts,
        Channel::Metrics,
        Channel::Heartbeat,
        Channel::PersonRequest,
    ];

    /// The short name, e.g. `health_alert`.
    pub const fn short(self) -> &'static str {
        match self {
            Channel::HealthAlert => "health_alert",
            Channel::RemediationNeeded => "remediation_needed",
            Channel::FalseAlarm => "false_alarm",
            Channel::RemediationComplete => "remediation_complete",
            Channel::Alerts => "alerts",
            Channel::Metrics => "metrics",
            Channel::Heartbeat => "heartbeat",
            Channel::PersonRequest => "person_request",
        }
    }

    /// The pub/sub channel, e.g. `hemostat:health_alert`.
    pub const fn name(self) -> &'static str {
        match self {
            Channel::HealthAlert => "hemostat:health_alert",
            Channel::RemediationNeeded => "hemostat:remediation_needed",
            Channel::FalseAlarm => "hemostat:false_alarm",
            Channel::RemediationComplete => "hemostat:remediation_complete",
            Channel::Alerts => "hemostat:alerts",
            Channel::Metrics => "hemostat:metrics",
            Channel::Heartbeat => "hemostat:heartbeat",
            Channel::PersonRequest => "hemostat:person_request",
        }
    }

    /// The durable stream that mirrors the channel, e.g. `hemostat:stream:health_alert`.
    pub const fn stream(self) -> &'static str {
        match self {
            Channel::HealthAlert => "hemostat:stream:health_alert",
            Channel::RemediationNeeded => "hemostat:stream:remediation_needed",
            Channel::FalseAlarm => "hemostat:stream:false_alarm",
            Channel::RemediationComplete => "hemostat:stream:remediation_complete",
            Channel::Alerts => "hemostat:stream:alerts",
            Channel::Metrics => "hemostat:stream:metrics",
            Channel::Heartbeat => "hemostat:stream:heartbeat",
            Channel::PersonRequest => "hemostat:stream:person_request",
        }
    }

    /// Looks a channel up by its pub/sub name or its stream name.
    pub fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL
            .into_iter()
            .find(|c| c.name() == name || c.stream() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One message on the bus. `event_type` and `data` come from the payload (adjacently tagged), so
/// a payload can never be published under the wrong type name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique and sortable by creation time (a ULID).
    pub id: String,
    /// When the event was created, RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    /// The agent kind that created it: `monitor`, `analyzer`, ...
    pub agent: String,
    /// The Docker host the event is about (or the agent runs on).
    pub host: String,
    /// Always [`SCHEMA_VERSION`] for what this code writes.
    pub schema_version: u32,
    /// `event_type` + `data`.
    #[serde(flatten)]
    pub payload: Payload,
}

impl Envelope {
    /// Wraps a payload with a fresh id and the current time.
    pub fn new(agent: &str, host: &str, payload: Payload) -> Envelope {
        Envelope {
            id: ulid::Ulid::new().to_string(),
            timestamp: Utc::now(),
            agent: agent.to_owned(),
            host: host.to_owned(),
            schema_version: SCHEMA_VERSION,
            payload,
        }
    }

    /// The channel this envelope belongs on, decided by its payload.
    pub fn channel(&self) -> Channel {
        self.payload.channel()
    }

    /// The `event_type` string, as written on the wire.
    pub fn event_type(&self) -> &'static str {
        self.payload.event_type()
    }

    /// Serializes to the wire form.
    pub fn to_json(&self) -> String {
        // Serializing these plain data types cannot fail: no maps with non-string keys, no
        // custom serializers that error.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parses the wire form.
    pub fn from_json(s: &str) -> Result<Envelope, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// RFC 3339 with a `Z` and microseconds, the form the Python prototype's consumers parse.
mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Every kind of event, closed. `event_type` on the wire is the snake_case variant name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data", rename_all = "snake_case")]
pub enum Payload {
    /// `hemostat:health_alert`: a container failed or breached a limit (firing or reminder).
    ContainerUnhealthy(ContainerAlert),
    /// `hemostat:health_alert`: a person stopped, paused or unpaused a container. Not a failure.
    ContainerUserAction(ContainerAlert),
    /// `hemostat:health_alert`: a problem reported earlier has cleared.
    ContainerRecovered(ContainerAlert),
    /// `hemostat:health_alert`: the host itself is in trouble (disk, memory, CPU).
    HostUnhealthy(HostAlert),
    /// `hemostat:health_alert`: a host problem has cleared.
    HostRecovered(HostAlert),
    /// `hemostat:remediation_needed`: the analyzer's verdict that something must be done.
    RemediationNeeded(RemediationRequest),
    /// `hemostat:false_alarm`: the analyzer's verdict that nothing should be done.
    FalseAlarm(FalseAlarm),
    /// `hemostat:false_alarm`: an alert that needed no verdict of its own, because the same
    /// problem of the same container is already being analysed or remediated.
    AlertFolded(Fold),
    /// `hemostat:remediation_complete`: what the responder did, refused or skipped.
    RemediationComplete(RemediationResult),
    /// `hemostat:alerts`: something a human must look at.
    Escalation(Escalation),
    /// `hemostat:metrics`: one round of container samples.
    ContainerMetrics(MetricsBatch),
    /// `hemostat:metrics`: one host sample.
    HostMetrics(HostSample),
    /// `hemostat:heartbeat`: an agent instance is alive.
    Heartbeat(Heartbeat),
    /// `hemostat:person_request`: a person asks the responder to act now (the dashboard's
    /// "restart now"); `requested_by` names them.
    PersonRequest(RemediationRequest),
}

impl Payload {
    /// The channel a payload is published on.
    pub fn channel(&self) -> Channel {
        match self {
            Payload::ContainerUnhealthy(_)
            | Payload::ContainerUserAction(_)
            | Payload::ContainerRecovered(_)
            | Payload::HostUnhealthy(_)
            | Payload::HostRecovered(_) => Channel::HealthAlert,
            Payload::RemediationNeeded(_) => Channel::RemediationNeeded,
            Payload::FalseAlarm(_) | Payload::AlertFolded(_) => Channel::FalseAlarm,
            Payload::RemediationComplete(_) => Channel::RemediationComplete,
            Payload::Escalation(_) => Channel::Alerts,
            Payload::ContainerMetrics(_) | Payload::HostMetrics(_) => Channel::Metrics,
            Payload::Heartbeat(_) => Channel::Heartbeat,
            Payload::PersonRequest(_) => Channel::PersonRequest,
        }
    }

    /// The `event_type` string written on the wire.
    pub fn event_type(&self) -> &'static str {
        match self {
            Payload::ContainerUnhealthy(_) => "container_unhealthy",
            Payload::ContainerUserAction(_) => "container_user_action",
            Payload::ContainerRecovered(_) => "container_recovered",
            Payload::HostUnhealthy(_) => "host_unhealthy",
            Payload::HostRecovered(_) => "host_recovered",
            Payload::RemediationNeeded(_) => "remediation_needed",
            Payload::FalseAlarm(_) => "false_alarm",
            Payload::AlertFolded(_) => "alert_folded",
            Payload::RemediationComplete(_) => "remediation_complete",
            Payload::Escalation(_) => "escalation",
            Payload::PersonRequest(_) => "person_request",
            Payload::ContainerMetrics(_) => "container_metrics",
            Payload::HostMetrics(_) => "host_metrics",
            Payload::Heartbeat(_) => "heartbeat",
        }
    }
}

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// Which container an event is about. Names are without Docker's leading `/`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerRef {
    /// Full container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Image reference as the container was created with.
    #[serde(default)]
    pub image: String,
    /// The labels that matter to hemostat: `hemostat.*` and `com.docker.compose.*`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What kind of container problem (or person's action) an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The main process exited (crash, `docker kill`, or a clean exit 0).
    Died,
    /// The container was killed by the kernel's OOM killer.
    OomKilled,
    /// An OOM kill happened inside the container but the container kept running.
    Oom,
    /// The health check reports unhealthy.
    Unhealthy,
    /// CPU above its threshold for the configured number of samples.
    CpuHigh,
    /// Memory above its threshold for the configured number of samples.
    MemoryHigh,
    /// A metric far outside the container's learned baseline.
    Anomaly,
    /// Stopped by a person (`docker stop`, `docker compose stop`).
    Stopped,
    /// Paused by a person.
    Paused,
    /// Unpaused by a person.
    Unpaused,
}

impl AlertKind {
    /// The wire name, e.g. `oom_killed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Died => "died",
            AlertKind::OomKilled => "oom_killed",
            AlertKind::Oom => "oom",
            AlertKind::Unhealthy => "unhealthy",
            AlertKind::CpuHigh => "cpu_high",
            AlertKind::MemoryHigh => "memory_high",
            AlertKind::Anomaly => "anomaly",
            AlertKind::Stopped => "stopped",
            AlertKind::Paused => "paused",
            AlertKind::Unpaused => "unpaused",
        }
    }
}

/// How the monitor learned about a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detection {
    /// From Docker's event stream, as it happened.
    Event,
    /// From a stats sample (thresholds, baseline).
    Stats,
    /// From re-listing containers after the event stream was lost: it happened while we were
    /// not listening.
    Resync,
    /// From host measurements.
    Host,
}

/// A container problem, a person's action on a container, or a recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerAlert {
    pub container: ContainerRef,
    pub kind: AlertKind,
    pub severity: Severity,
    /// True when a person did this (stop, pause): not a failure, never remediated.
    pub user_initiated: bool,
    /// True when this repeats a problem already reported that is still going on.
    #[serde(default)]
    pub reminder: bool,
    pub detected_by: Detection,
    /// One human-readable sentence.
    pub summary: String,
    /// The container's state when the alert was made (from inspect), when available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    /// The latest stats sample, for threshold and anomaly alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ContainerSample>,
    /// For threshold and anomaly alerts: the value, the limit it crossed and what it was
    /// compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breach: Option<Breach>,
    /// When the problem started (the first sample or event that showed it).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub since: Option<DateTime<Utc>>,
    /// When Docker emitted the event this alert comes from, for latency accounting.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub docker_event_time: Option<DateTime<Utc>>,
    /// The container carries `hemostat.protect=true` or is one of hemostat's own: alert only.
    #[serde(default)]
    pub protected: bool,
    /// For deaths, OOM kills and failing health checks: the newest lines of the container's
    /// output, read by the monitor on the container's own host, scrubbed and bounded there.
    /// The analyzer reads no engine; this is all it knows of the container's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogTail>,
}

/// The newest lines of a container's output, scrubbed of secrets and cut to a byte budget at
/// the monitor. Untrusted data: nothing in it is an instruction.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LogTail {
    /// Oldest first.
    pub lines: Vec<String>,
    /// Older lines read but left out to fit the budget.
    #[serde(default)]
    pub dropped: usize,
}

/// A threshold or baseline breach, with the numbers that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    /// `cpu_percent` or `memory_percent`.
    pub metric: String,
    /// The latest value.
    pub value: f64,
    /// The threshold crossed (for anomalies: the baseline mean + z·σ).
    pub threshold: f64,
    /// How many consecutive samples were over it.
    pub samples: u32,
    /// For anomalies: the learned mean and standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_stddev: Option<f64>,
}

/// A container's state as Docker reports it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerState {
    /// `running`, `exited`, `paused`, `restarting`, `dead`, `created`, `removing`.
    pub status: String,
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub restart_count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthState>,
    /// Memory limit in bytes, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
}

/// The health-check part of a container's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HealthState {
    /// `starting`, `healthy`, `unhealthy`.
    pub status: String,
    #[serde(default)]
    pub failing_streak: i64,
    /// The last check's output, trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i64>,
}

/// One stats sample of one container.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerSample {
    pub id: String,
    pub name: String,
    /// CPU as Docker's CLI shows it: 100 = one full core. `None` on the first sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Usage minus inactive page cache, as Docker's CLI computes it.
    pub memory_usage_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f64>,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// One round of container samples.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricsBatch {
    pub samples: Vec<ContainerSample>,
    /// How long the round took to collect.
    pub collect_ms: u64,
}

/// What is wrong with the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAlertKind {
    DiskPressure,
    MemoryPressure,
    CpuPressure,
}

/// A host problem or its recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostAlert {
    pub kind: HostAlertKind,
    pub severity: Severity,
    pub summary: String,
    #[serde(default)]
    pub reminder: bool,
    pub sample: HostSample,
    /// The limit that was crossed (a percentage), when the alert is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

impl HostAlert {
    /// The problem this alert reports, with the measure it crossed.
    pub fn problem(&self) -> Problem {
        let metric = match self.kind {
            HostAlertKind::DiskPressure => "disk_percent",
            HostAlertKind::MemoryPressure => "memory_percent",
            HostAlertKind::CpuPressure => "cpu_percent",
        };
        Problem {
            metric: Some(metric.into()),
            threshold: self.threshold,
            ..Problem::new(ProblemKind::of_host(self.kind))
        }
    }
}

/// One host sample.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostSample {
    /// All cores together: 100 = every core busy. `None` on the first sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    pub cpu_count: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub memory_percent: f64,
    /// The filesystem measured for disk pressure (Docker's data root, as seen by the monitor).
    pub disk_path: String,
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub disk_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerDiskUsage>,
    pub containers_running: u32,
    pub containers_total: u32,
}

/// Docker's own disk use.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DockerDiskUsage {
    pub images_bytes: u64,
    pub images_count: u32,
    pub dangling_images_count: u32,
    pub stopped_containers: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_cache_bytes: Option<u64>,
}

/// The closed list of things the responder may do. Nothing else can be expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Restart,
    Stop,
    Start,
    Cleanup,
    /// Do nothing but tell people (`notify` is accepted as a synonym).
    #[serde(alias = "notify")]
    None,
}

/// What a remediation request answers, as the responder re-checks it before acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The container's process exited (crash, `docker kill`).
    Died,
    /// The kernel's OOM killer ended the container.
    OomKilled,
    /// An OOM kill inside a container that kept running.
    Oom,
    /// Its health check fails.
    Unhealthy,
    /// CPU over its threshold.
    CpuHigh,
    /// Memory over its threshold.
    MemoryHigh,
    /// Far outside its learned baseline.
    Anomaly,
    /// The host's disk is nearly full.
    DiskPressure,
    /// The host's memory is nearly used up.
    MemoryPressure,
    /// The host's CPUs are saturated.
    CpuPressure,
    /// A container it depends on (shared network namespace, `hemostat.depends_on`) was
    /// restarted after it started.
    DependencyRestarted,
}

impl ProblemKind {
    /// The problem a container alert reports; `None` for a person's actions.
    pub fn of_alert(kind: AlertKind) -> Option<ProblemKind> {
        Some(match kind {
            AlertKind::Died => ProblemKind::Died,
            AlertKind::OomKilled => ProblemKind::OomKilled,
            AlertKind::Oom => ProblemKind::Oom,
            AlertKind::Unhealthy => ProblemKind::Unhealthy,
            AlertKind::CpuHigh => ProblemKind::CpuHigh,
            AlertKind::MemoryHigh => ProblemKind::MemoryHigh,
            AlertKind::Anomaly => ProblemKind::Anomaly,
            AlertKind::Stopped | AlertKind::Paused | AlertKind::Unpaused => return None,
        })
    }

    /// The problem a host alert reports.
    pub fn of_host(kind: HostAlertKind) -> ProblemKind {
        match kind {
            HostAlertKind::DiskPressure => ProblemKind::DiskPressure,
            HostAlertKind::MemoryPressure => ProblemKind::MemoryPressure,
            HostAlertKind::CpuPressure => ProblemKind::CpuPressure,
        }
    }

    /// The wire name, e.g. `oom_killed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Died => "died",
            ProblemKind::OomKilled => "oom_killed",
            ProblemKind::Oom => "oom",
            ProblemKind::Unhealthy => "unhealthy",
            ProblemKind::CpuHigh => "cpu_high",
            ProblemKind::MemoryHigh => "memory_high",
            ProblemKind::Anomaly => "anomaly",
            ProblemKind::DiskPressure => "disk_pressure",
            ProblemKind::MemoryPressure => "memory_pressure",
            ProblemKind::CpuPressure => "cpu_pressure",
            ProblemKind::DependencyRestarted => "dependency_restarted",
        }
    }
}

/// The problem a request names, with what the responder needs to tell whether it still holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// When it began: the death, the first failing check, the parent's restart.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub since: Option<DateTime<Utc>>,
    /// For threshold problems: the metric (`cpu_percent`, `memory_percent`, `disk_percent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// For threshold problems: the limit that was crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// For `dependency_restarted`: the container whose restart this follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Problem {
    /// A problem of `kind` with nothing more known about it.
    pub fn new(kind: ProblemKind) -> Problem {
        Problem {
            kind,
            since: None,
            metric: None,
            threshold: None,
            parent: None,
        }
    }

    /// The problem a container alert reports (`None` for a person's action).
    pub fn of_alert(a: &ContainerAlert) -> Option<Problem> {
        let kind = ProblemKind::of_alert(a.kind)?;
        Some(Problem {
            kind,
            since: a.since.or(a.docker_event_time),
            metric: a.breach.as_ref().map(|b| b.metric.clone()),
            threshold: a.breach.as_ref().map(|b| b.threshold),
            parent: None,
        })
    }
}

/// The responder's safety guards, in the order they are checked. Every refusal names the
/// guard that made it (`guard` on a `remediation_complete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// The request itself: an action that needs a container names none, or asks for nothing.
    Request,
    /// The container no longer exists.
    Exists,
    /// Not in hemostat's scope (labels, `HEMOSTAT_MONITOR_ALL`, `HEMOSTAT_SCOPE_LABEL`).
    Scope,
    /// `hemostat.protect=true` or one of hemostat's own services.
    Protection,
    /// A person stopped or paused it.
    Person,
    /// Docker's own restart policy is handling it, or keeps restarting it in a loop.
    RestartPolicy,
    /// The problem the request names is gone.
    Problem,
    /// Many containers of the host are failing at once.
    Storm,
    /// Too many remediations of this container recently.
    Breaker,
    /// The container's restart backoff has not run out.
    Backoff,
    /// A cleanup ran on this host too recently.
    Cooldown,
    /// The host's Docker write budget is spent for now.
    RateLimit,
    /// Another request is acting on the same container.
    Lock,
    /// A maintenance window pauses remediation of this container (or host).
    Maintenance,
    /// The container (or every container) is in approve mode: a person must approve the
    /// action first, or declined it, or let the proposal expire.
    Approval,
}

impl Guard {
    /// The wire name, e.g. `restart_policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::Request => "request",
            Guard::Exists => "exists",
            Guard::Scope => "scope",
            Guard::Protection => "protection",
            Guard::Person => "person",
            Guard::RestartPolicy => "restart_policy",
            Guard::Problem => "problem",
            Guard::Storm => "storm",
            Guard::Breaker => "breaker",
            Guard::Backoff => "backoff",
            Guard::Cooldown => "cooldown",
            Guard::RateLimit => "rate_limit",
            Guard::Lock => "lock",
            Guard::Maintenance => "maintenance",
            Guard::Approval => "approval",
        }
    }
}

/// How a verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisMethod {
    Rules,
    Llm,
    /// The LLM was configured but its answer was unusable; rules decided.
    RulesFallback,
    /// A person asked for it (the dashboard's "restart now").
    Person,
}

/// The analyzer's verdict that something must be done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemediationRequest {
    /// The container to act on; absent for host-wide actions (`cleanup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    /// The Docker host the action must happen on; only that host's responder acts.
    pub target_host: String,
    pub action: Action,
    pub root_cause: String,
    pub reason: String,
    /// In [0, 1].
    pub confidence: f64,
    pub analysis_method: AnalysisMethod,
    /// Why the LLM was not used, when `analysis_method` is `rules_fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The `health_alert` envelope this answers.
    pub alert_id: String,
    /// The problem this answers: the responder acts only while it still holds. A request that
    /// names none is acted on only if the container is down or unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// Who asked, when a person did (the dashboard's "restart now", by token or by name): a
    /// person's request needs no problem and no approval, and passes every other guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// The analyzer's verdict that no action is needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FalseAlarm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    pub alert_id: String,
    pub root_cause: String,
    pub reason: String,
    pub confidence: f64,
    pub analysis_method: AnalysisMethod,
}

/// An alert folded into the analysis or remediation already under way for the same problem of
/// the same container: it needs no verdict of its own, and this record says where it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fold {
    pub container: ContainerRef,
    /// The folded `health_alert` envelope.
    pub alert_id: String,
    pub kind: AlertKind,
    /// The envelope it joined: the alert being analysed, or the `remediation_needed` in flight.
    pub into: String,
    pub reason: String,
}

/// The result of a remediation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failed,
    /// A safety rule refused it (scope, protection, breaker, storm).
    Rejected,
    /// Deliberately not done (a person's stop, the problem is gone, dry run).
    Skipped,
    /// Done, but a person stopped or paused the container while hemostat was verifying it:
    /// their action wins, and nothing failed.
    Superseded,
}

/// What verification after an action found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub running: bool,
    /// `None` when the container has no health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    pub waited_ms: u64,
    pub detail: String,
}

/// What the responder did about one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemediationResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    /// The `remediation_needed` envelope this answers.
    pub request_id: String,
    pub action: Action,
    pub outcome: Outcome,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// From the moment the responder took the request to this decision, waits included.
    pub duration_ms: u64,
    pub dry_run: bool,
    /// The guard that refused or skipped it; absent when every guard passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// The problem the request named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<ProblemKind>,
}

/// Why a human is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationKind {
    CircuitBreakerOpen,
    /// The analyzer saw a container die again and again: restarting will not fix it.
    CrashLoop,
    RemediationFailed,
    HostWide,
    RemediationPaused,
    ProtectedContainer,
    /// The container is in approve mode: a person must approve the proposed action.
    ApprovalNeeded,
    Other,
}

/// Something a human must look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub kind: EscalationKind,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    pub summary: String,
    #[serde(default)]
    pub detail: String,
    /// For an approval: the proposal's id (the request's), to approve or decline it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<Proposal>,
}

/// A proposed action that waits for a person: approve it, decline it, or let it expire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The request's id: `hemostat:proposal:<host>:<id>`, decided in `hemostat:decision:<host>:<id>`.
    pub id: String,
    pub action: Action,
    pub expires_at: DateTime<Utc>,
}

/// The Redis keys of proposals and decisions, shared by the responder (which proposes and
/// reads decisions), the dashboard (which decides) and the alert service (which links to them).
pub mod proposals {
    /// A proposal's record (written by the responder): action, container, root cause,
    /// expiry, and its outcome once reported.
    pub fn proposal(host: &str, id: &str) -> String {
        format!("hemostat:proposal:{host}:{id}")
    }
    /// A person's decision (written once, by the dashboard): `approved:<who>` or
    /// `declined:<who>`.
    pub fn decision(host: &str, id: &str) -> String {
        format!("hemostat:decision:{host}:{id}")
    }
    /// The proposals of a host, scored by when they expire (the dashboard lists them).
    pub fn index(host: &str) -> String {
        format!("hemostat:proposals:{host}")
    }
    /// The key that signs approval links (created by the first responder, read by the alert
    /// service to sign and the dashboard to check).
    pub const SIGNING_KEY: &str = "hemostat:approval_key";

    /// The signature of an approval link for proposal `id` on `host`: HMAC-SHA256 over
    /// `host/id` with the signing key, hex.
    pub fn sign(key: &[u8], host: &str, id: &str) -> String {
        use hmac::Mac as _;
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
            return String::new();
        };
        mac.update(host.as_bytes());
        mac.update(b"/");
        mac.update(id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `sig` signs `host/id` (compared in constant time).
    pub fn verify(key: &[u8], host: &str, id: &str, sig: &str) -> bool {
        let want = sign(key, host, id);
        !want.is_empty()
            && want.len() == sig.len()
            && want
                .bytes()
                .zip(sig.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// An agent instance is alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Unique per process: `<agent>-<hostname>-<pid>`.
    pub instance: String,
    pub version: String,
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    pub uptime_secs: u64,
    /// How often heartbeats come; a dashboard treats 3 missed as down.
    pub interval_secs: u64,
    /// Empty when all is well; otherwise one line per reason ("redis: connection refused").
    #[serde(default)]
    pub degraded: Vec<String>,
}

mod opt_rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn container() -> ContainerRef {
        ContainerRef {
            id: "4f1c9a".into(),
            name: "web".into(),
            image: "nginx:1.27".into(),
            labels: BTreeMap::from([("hemostat.enable".into(), "true".into())]),
        }
    }

    fn alert(kind: AlertKind) -> ContainerAlert {
        ContainerAlert {
            container: container(),
            kind,
            severity: Severity::Critical,
            user_initiated: false,
            reminder: false,
            detected_by: Detection::Event,
            summary: "web died".into(),
            state: Some(ContainerState {
                status: "exited".into(),
                exit_code: Some(137),
                health: Some(HealthState {
                    status: "unhealthy".into(),
                    failing_streak: 3,
                    last_output: Some("boom".into()),
                    last_exit_code: Some(1),
                }),
                ..Default::default()
            }),
            metrics: Some(ContainerSample {
                cpu_percent: Some(12.5),
                ..Default::default()
            }),
            breach: Some(Breach {
                metric: "cpu_percent".into(),
                value: 97.0,
                threshold: 85.0,
                samples: 3,
                baseline_mean: Some(10.0),
                baseline_stddev: None,
            }),
            since: Some(Utc::now()),
            docker_event_time: Some(Utc::now()),
            protected: true,
            logs: None,
        }
    }

    fn host_sample() -> HostSample {
        HostSample {
            cpu_percent: Some(3.0),
            docker: Some(DockerDiskUsage::default()),
            ..Default::default()
        }
    }

    /// One example of every payload variant.
    fn every_payload() -> Vec<Payload> {
        vec![
            Payload::ContainerUnhealthy(alert(AlertKind::OomKilled)),
            Payload::ContainerUserAction(alert(AlertKind::Stopped)),
            Payload::ContainerRecovered(alert(AlertKind::CpuHigh)),
            Payload::HostUnhealthy(HostAlert {
                kind: HostAlertKind::DiskPressure,
                severity: Severity::Warning,
                summary: "disk".into(),
                reminder: true,
                sample: host_sample(),
                threshold: Some(90.0),
            }),
            Payload::HostRecovered(HostAlert {
                kind: HostAlertKind::MemoryPressure,
                severity: Severity::Info,
                summary: "ok".into(),
                reminder: false,
                sample: host_sample(),
                threshold: None,
            }),
            Payload::RemediationNeeded(RemediationRequest {
                requested_by: None,
                container: Some(container()),
                target_host: "vm".into(),
                action: Action::Restart,
                root_cause: "crash".into(),
                reason: "exit 1".into(),
                confidence: 0.9,
                analysis_method: AnalysisMethod::RulesFallback,
                fallback_reason: Some("timeout".into()),
                alert_id: "01J".into(),
                problem: Some(Problem {
                    since: Some(Utc::now()),
                    metric: Some("cpu_percent".into()),
                    threshold: Some(85.0),
                    ..Problem::new(ProblemKind::CpuHigh)
                }),
            }),
            Payload::FalseAlarm(FalseAlarm {
                container: Some(container()),
                alert_id: "01J".into(),
                root_cause: "a person stopped it".into(),
                reason: "user_initiated".into(),
                confidence: 1.0,
                analysis_method: AnalysisMethod::Llm,
            }),
            Payload::AlertFolded(Fold {
                container: container(),
                alert_id: "01L".into(),
                kind: AlertKind::Died,
                into: "01J".into(),
                reason: "the same problem is already being remediated".into(),
            }),
            Payload::RemediationComplete(RemediationResult {
                container: Some(container()),
                request_id: "01K".into(),
                action: Action::None,
                outcome: Outcome::Rejected,
                reason: "protected".into(),
                verification: Some(Verification {
                    running: true,
                    healthy: None,
                    waited_ms: 40,
                    detail: "running".into(),
                }),
                duration_ms: 41,
                dry_run: true,
                guard: Some(Guard::Protection),
                problem: Some(ProblemKind::DependencyRestarted),
            }),
            Payload::Escalation(Escalation {
                proposal: None,
                kind: EscalationKind::CircuitBreakerOpen,
                severity: Severity::Critical,
                container: None,
                summary: "breaker".into(),
                detail: String::new(),
            }),
            Payload::ContainerMetrics(MetricsBatch {
                samples: vec![ContainerSample::default()],
                collect_ms: 12,
            }),
            Payload::HostMetrics(host_sample()),
            Payload::Heartbeat(Heartbeat {
                instance: "monitor-vm-1".into(),
                version: "0.1.0".into(),
                started_at: Utc::now(),
                uptime_secs: 5,
                interval_secs: 10,
                degraded: vec!["docker: down".into()],
            }),
        ]
    }

    #[test]
    fn every_payload_round_trips() {
        for payload in every_payload() {
            let env = Envelope::new("monitor", "vm", payload);
            let json = env.to_json();
            let back = Envelope::from_json(&json).expect(&json);
            // Timestamps are written with microseconds; compare at that precision.
            assert_eq!(
                back.timestamp.timestamp_micros(),
                env.timestamp.timestamp_micros()
            );
            let mut back = back;
            back.timestamp = env.timestamp;
            if let (Payload::ContainerUnhealthy(a), Payload::ContainerUnhealthy(b)) =
                (&mut back.payload, &env.payload)
            {
                a.since = b.since;
                a.docker_event_time = b.docker_event_time;
            }
            if let (Payload::RemediationNeeded(a), Payload::RemediationNeeded(b)) =
                (&mut back.payload, &env.payload)
                && let (Some(pa), Some(pb)) = (a.problem.as_mut(), b.problem.as_ref())
            {
                pa.since = pb.since;
            }
            if let (Payload::Heartbeat(a), Payload::Heartbeat(b)) =
                (&mut back.payload, &env.payload)
            {
                a.started_at = b.started_at;
            }
            if let (Payload::ContainerUserAction(a), Payload::ContainerUserAction(b))
            | (Payload::ContainerRecovered(a), Payload::ContainerRecovered(b)) =
                (&mut back.payload, &env.payload)
            {
                a.since = b.since;
                a.docker_event_time = b.docker_event_time;
            }
            assert_eq!(back, env, "{json}");
        }
    }

    #[test]
    fn envelope_keeps_the_prototype_field_names() {
        let env = Envelope::new("monitor", "vm", every_payload().remove(0));
        let v: serde_json::Value = serde_json::from_str(&env.to_json()).unwrap();
        for field in [
            "id",
            "event_type",
            "timestamp",
            "agent",
            "host",
            "schema_version",
            "data",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["event_type"], "container_unhealthy");
        assert_eq!(v["schema_version"], 1);
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z'), "{ts} is not UTC");
    }

    #[test]
    fn event_type_matches_the_serde_tag_and_channel_is_right() {
        let expected_channels = [
            Channel::HealthAlert,
            Channel::HealthAlert,
            Channel::HealthAlert,
            Channel::HealthAlert,
            Channel::HealthAlert,
            Channel::RemediationNeeded,
            Channel::FalseAlarm,
            Channel::FalseAlarm,
            Channel::RemediationComplete,
            Channel::Alerts,
            Channel::Metrics,
            Channel::Metrics,
            Channel::Heartbeat,
        ];
        for (payload, channel) in every_payload().into_iter().zip(expected_channels) {
            let v = serde_json::to_value(Envelope::new("a", "h", payload.clone())).unwrap();
            assert_eq!(v["event_type"], payload.event_type());
            assert_eq!(payload.channel(), channel);
        }
    }

    #[test]
    fn channel_names_follow_the_design() {
        for c in Channel::ALL {
            assert_eq!(c.name(), format!("hemostat:{}", c.short()));
            assert_eq!(c.stream(), format!("hemostat:stream:{}", c.short()));
            assert_eq!(Channel::from_name(c.name()), Some(c));
            assert_eq!(Channel::from_name(c.stream()), Some(c));
        }
        assert_eq!(Channel::from_name("hemostat:nope"), None);
    }

    #[test]
    fn wire_names_match_serde() {
        use ProblemKind::*;
        for k in [
            Died,
            OomKilled,
            Oom,
            Unhealthy,
            CpuHigh,
            MemoryHigh,
            Anomaly,
            DiskPressure,
            MemoryPressure,
            CpuPressure,
            DependencyRestarted,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        use Guard::*;
        for g in [
            Request,
            Exists,
            Scope,
            Protection,
            Person,
            RestartPolicy,
            Problem,
            Storm,
            Breaker,
            Backoff,
            Cooldown,
            RateLimit,
            Lock,
        ] {
            assert_eq!(serde_json::to_value(g).unwrap(), g.as_str());
        }
        for a in [
            AlertKind::Died,
            AlertKind::OomKilled,
            AlertKind::Oom,
            AlertKind::Unhealthy,
            AlertKind::CpuHigh,
            AlertKind::MemoryHigh,
            AlertKind::Anomaly,
        ] {
            let p = ProblemKind::of_alert(a).unwrap();
            assert_eq!(p.as_str(), a.as_str(), "a problem keeps its alert's name");
        }
        assert_eq!(ProblemKind::of_alert(AlertKind::Stopped), None);
    }

    #[test]
    fn actions_outside_the_allow_list_do_not_decode() {
        for ok in ["restart", "stop", "start", "cleanup", "none", "notify"] {
            serde_json::from_value::<Action>(serde_json::json!(ok)).unwrap();
        }
        for bad in ["rm", "exec", "Restart", "restart; rm -rf /", ""] {
            assert!(serde_json::from_value::<Action>(serde_json::json!(bad)).is_err());
        }
    }

    #[test]
    fn unknown_event_type_and_garbage_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            "null",
            r#"{"id":"1","timestamp":"2026-01-01T00:00:00Z","agent":"a","host":"h","schema_version":1,"event_type":"nope","data":{}}"#,
            r#"{"id":"1","timestamp":"yesterday","agent":"a","host":"h","schema_version":1,"event_type":"heartbeat","data":{}}"#,
        ] {
            assert!(Envelope::from_json(bad).is_err(), "{bad}");
        }
    }

    /// Every ```json block in docs/API_PROTOCOL.md that is an envelope must decode, and every
    /// event type must have an example there.
    #[test]
    fn protocol_document_examples_decode() {
        let doc = include_str!("../../docs/API_PROTOCOL.md");
        let mut seen = std::collections::BTreeSet::new();
        let mut rest = doc;
        while let Some(start) = rest.find("```json") {
            let after = &rest[start + "```json".len()..];
            let end = after.find("```").expect("unterminated json block");
            let block = &after[..end];
            let v: serde_json::Value = serde_json::from_str(block)
                .unwrap_or_else(|e| panic!("bad JSON in API_PROTOCOL.md: {e}\n{block}"));
            if v.get("event_type").is_some() {
                let env: Envelope = serde_json::from_value(v)
                    .unwrap_or_else(|e| panic!("example does not decode: {e}\n{block}"));
                seen.insert(env.event_type());
            }
            rest = &after[end + 3..];
        }
        for payload in every_payload() {
            assert!(
                seen.contains(payload.event_type()),
                "docs/API_PROTOCOL.md has no example of {}",
                payload.event_type()
            );
        }
    }
}
