//! The alert service's settings: flags and environment, validated once into [`AlertConfig`].
//! Webhook URLs and keys are secrets: errors about them never repeat them.

use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;
use hemostat_common::config::{CommonArgs, ConfigError, parse_duration};
use hemostat_common::events::Severity;

use crate::engine::EngineConfig;
use crate::notify::Sources;
use crate::sink::{Delivery, Kind, Preset};

fn parse_severity(raw: &str) -> Result<Severity, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "info" => Ok(Severity::Info),
        "warning" | "warn" => Ok(Severity::Warning),
        "critical" | "crit" => Ok(Severity::Critical),
        _ => Err(format!(
            "{raw:?} is not a severity; expected info, warning or critical"
        )),
    }
}

/// hemostat alert: tells people (chat, push, email, pagers, webhooks) once and clearly, by
/// route, holding what maintenance windows pause.
#[derive(Clone, Parser)]
#[command(name = "hemostat-alert", version, about)]
pub struct AlertArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Slack incoming-webhook URL (a secret: never logged).
    #[arg(long, env = "SLACK_WEBHOOK_URL", hide_env_values = true)]
    pub slack_webhook_url: Option<String>,

    /// Least severity sent to Slack: info, warning or critical.
    #[arg(long, env = "SLACK_MIN_SEVERITY", default_value = "info", value_parser = parse_severity)]
    pub slack_min_severity: Severity,

    /// A generic webhook URL (a secret: never logged).
    #[arg(long, env = "WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,

    /// The generic webhook's format.
    #[arg(long, env = "WEBHOOK_PRESET", value_enum, default_value_t = Preset::Json)]
    pub webhook_preset: Preset,

    /// Least severity sent to the generic webhook.
    #[arg(long, env = "WEBHOOK_MIN_SEVERITY", default_value = "info", value_parser = parse_severity)]
    pub webhook_min_severity: Severity,

    /// PagerDuty Events API v2 routing key (a secret): pages on escalations and failed
    /// remediations, resolves when the container recovers.
    #[arg(long, env = "PAGERDUTY_ROUTING_KEY", hide_env_values = true)]
    pub pagerduty_routing_key: Option<String>,

    /// PagerDuty Events API endpoint.
    #[arg(
        long,
        env = "PAGERDUTY_URL",
        default_value = "https://events.pagerduty.com/v2/enqueue"
    )]
    pub pagerduty_url: String,

    /// Least severity paged.
    #[arg(long, env = "PAGERDUTY_MIN_SEVERITY", default_value = "warning", value_parser = parse_severity)]
    pub pagerduty_min_severity: Severity,

    /// Notification URLs of the default route, separated by blanks or commas: `slack://`,
    /// `discord://`, `teams://`, `ntfy://`, `gotify://`, `telegram://`, `pushover://`,
    /// `matrix://`, `mailto://`/`smtp://`, `pagerduty://`, `opsgenie://`, `json://` (secrets:
    /// never logged). The variables above keep working beside them.
    #[arg(
        long,
        env = "HEMOSTAT_NOTIFY_URLS",
        hide_env_values = true,
        default_value = ""
    )]
    pub notify_urls: String,

    /// More routes, `;`-separated: `name: [severity=<least>] url url ...`. A container
    /// labelled `hemostat.notify=<name>` (or several names, comma-separated) reaches only its
    /// routes' URLs; everything else goes to the default route.
    #[arg(
        long,
        env = "HEMOSTAT_NOTIFY_ROUTES",
        hide_env_values = true,
        default_value = ""
    )]
    pub notify_routes: String,

    /// Linked from every message when set.
    #[arg(long, env = "HEMOSTAT_DASHBOARD_URL")]
    pub dashboard_url: Option<String>,

    /// Tell people about every crash, OOM kill and failing health check (and their recovery),
    /// not only about what hemostat did.
    #[arg(long, env = "HEMOSTAT_NOTIFY_CRASHES", default_value = "true", value_parser = BoolishValueParser::new(),
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub notify_crashes: bool,

    /// Tell people about false alarms too.
    #[arg(long, env = "HEMOSTAT_NOTIFY_FALSE_ALARMS", default_value = "false", value_parser = BoolishValueParser::new(),
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub notify_false_alarms: bool,

    /// How long the first notification of a burst waits for others to join one message.
    #[arg(long, env = "HEMOSTAT_GROUP_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub group_wait: Duration,

    /// How soon a problem that is still firing is told again.
    #[arg(long, env = "HEMOSTAT_REPEAT_INTERVAL", default_value = "4h", value_parser = parse_duration)]
    pub repeat_interval: Duration,

    /// Timeout of one request to a sink.
    #[arg(long, env = "HEMOSTAT_SINK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub sink_timeout: Duration,

    /// Attempts per message and sink before it is dead-lettered.
    #[arg(long, env = "HEMOSTAT_SINK_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub sink_attempts: u32,

    /// First retry delay (doubles; a 429's Retry-After wins).
    #[arg(long, env = "HEMOSTAT_SINK_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub sink_backoff: Duration,

    /// Longest retry delay.
    #[arg(long, env = "HEMOSTAT_SINK_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub sink_backoff_max: Duration,

    /// Most requests per minute to each sink.
    #[arg(long, env = "HEMOSTAT_SINK_RATE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sink_rate: u32,

    /// How long notification decisions are kept in `hemostat:stream:notifications`.
    #[arg(long, env = "HEMOSTAT_HISTORY_RETENTION", default_value = "7d", value_parser = parse_days)]
    pub history_retention: Duration,

    #[command(subcommand)]
    pub command: Option<Command>,
}

fn parse_days(raw: &str) -> Result<Duration, String> {
    match raw.trim().strip_suffix('d') {
        Some(days) => days
            .trim()
            .parse::<u64>()
            .map(|d| Duration::from_secs(d * 86_400))
            .map_err(|_| format!("{raw:?} is not a duration; expected e.g. 7d, 12h or 30m")),
        None => parse_duration(raw),
    }
}

/// One-off commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Send a test notification to every configured sink and report what each did.
    Test,
    /// Mute notifications (list, add, expire).
    #[command(subcommand)]
    Silence(SilenceCommand),
    /// Maintenance windows: pause remediation, notifications or both, once or every week.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MaintenanceCommand {
    /// Open a window: `--for 30m`, or `--start ... --end ...`, or weekly with `--days mon-fri
    /// --from 02:00 --to 04:00 --tz Europe/Berlin`; narrowed with `--host`, `--container`,
    /// `--label`, `--project`.
    Add(Box<hemostat_common::windows::WindowSpec>),
    /// List the windows, and whether each holds now.
    List,
    /// End a window now (what it held is summarised at once).
    End { id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SilenceCommand {
    /// Add a silence; empty matchers match anything, a trailing * matches a prefix.
    Add {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        container: Option<String>,
        /// e.g. died, oom_killed, remediation_restart_failed, escalation_circuit_breaker_open.
        #[arg(long)]
        kind: Option<String>,
        /// How long it lasts (e.g. 2h).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List active silences.
    List,
    /// End a silence now.
    Expire { id: String },
}

impl std::fmt::Debug for AlertArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| if o.is_some() { "set" } else { "unset" };
        f.debug_struct("AlertArgs")
            .field("common", &self.common)
            .field("slack_webhook_url", &set(&self.slack_webhook_url))
            .field("webhook_url", &set(&self.webhook_url))
            .field("pagerduty_routing_key", &set(&self.pagerduty_routing_key))
            .field(
                "notify_urls",
                &crate::urls::split_list(&self.notify_urls).len(),
            )
            .field(
                "notify_routes",
                &self
                    .notify_routes
                    .split(';')
                    .filter(|r| !r.trim().is_empty())
                    .count(),
            )
            .finish_non_exhaustive()
    }
}

/// One sink's settings.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub kind: Kind,
    pub min_severity: Severity,
    /// The route it belongs to ([`DEFAULT_ROUTE`] unless configured otherwise).
    pub route: String,
}

/// The route of every notification no label routes elsewhere.
pub const DEFAULT_ROUTE: &str = "default";
/// The container label that routes a container's notifications.
pub const LABEL_NOTIFY: &str = "hemostat.notify";

/// The routes `n` goes to: those its container's `hemostat.notify` label names that are
/// configured, else the default route (a host-wide notification, an unlabelled container, a
/// label naming no configured route).
pub fn routes_of<'a>(
    n: &'a crate::notify::Notification,
    routes: &std::collections::BTreeSet<String>,
) -> Vec<&'a str> {
    let named: Vec<&str> = n
        .container
        .as_ref()
        .and_then(|c| c.labels.get(LABEL_NOTIFY))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|r| routes.contains(*r))
                .collect()
        })
        .unwrap_or_default();
    if named.is_empty() {
        vec![DEFAULT_ROUTE]
    } else {
        named
    }
}

/// A name for a sink that no other sink has: `preferred`, else `preferred-2`, `-3`, ...
fn unique(preferred: String, taken: &mut std::collections::BTreeSet<String>) -> String {
    let mut name = preferred.clone();
    let mut i = 2;
    while taken.contains(&name) {
        name = format!("{preferred}-{i}");
        i += 1;
    }
    taken.insert(name.clone());
    name
}

/// The sinks of one route's URL list.
fn route_sinks(
    variable: &'static str,
    route: &str,
    least: Severity,
    urls: &[String],
    taken: &mut std::collections::BTreeSet<String>,
    out: &mut Vec<SinkConfig>,
) -> Result<(), ConfigError> {
    for (i, raw) in urls.iter().enumerate() {
        let parsed = crate::urls::parse(raw).map_err(|e| ConfigError {
            variable,
            message: format!(
                "URL {} of route {route}: {e} (the URL is not shown: it holds a secret)",
                i + 1
            ),
        })?;
        for kind in parsed.kinds {
            let preferred = match (&parsed.name, route) {
                (Some(n), _) => n.clone(),
                (None, DEFAULT_ROUTE) => kind.label().to_owned(),
                (None, r) => format!("{r}-{}", kind.label()),
            };
            out.push(SinkConfig {
                name: unique(preferred, taken),
                kind,
                min_severity: parsed.min_severity.unwrap_or(least).max(least),
                route: route.to_owned(),
            });
        }
    }
    Ok(())
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub sinks: Vec<SinkConfig>,
    /// The configured routes' names (the default route always among them).
    pub routes: std::collections::BTreeSet<String>,
    pub delivery: Delivery,
    pub engine: EngineConfig,
    pub sources: Sources,
    pub dashboard_url: Option<String>,
    pub history_retention: Duration,
}

fn check_url(variable: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(ConfigError {
            variable,
            // The value is a secret: say what is wrong without repeating it.
            message: "is not an http(s) URL (value not shown: it is a secret)".into(),
        })
    }
}

impl AlertArgs {
    pub fn validate(&self) -> Result<AlertConfig, ConfigError> {
        self.common.validate()?;
        let mut sinks = Vec::new();
        if let Some(url) = self.slack_webhook_url.as_deref().filter(|u| !u.is_empty()) {
            check_url("SLACK_WEBHOOK_URL", url)?;
            sinks.push(SinkConfig {
                name: "slack".into(),
                kind: Kind::Slack { url: url.into() },
                min_severity: self.slack_min_severity,
                route: DEFAULT_ROUTE.into(),
            });
        }
        if let Some(url) = self.webhook_url.as_deref().filter(|u| !u.is_empty()) {
            check_url("WEBHOOK_URL", url)?;
            sinks.push(SinkConfig {
                name: format!("webhook-{:?}", self.webhook_preset).to_lowercase(),
                kind: Kind::Webhook {
                    url: url.into(),
                    preset: self.webhook_preset,
                    headers: Vec::new(),
                },
                min_severity: self.webhook_min_severity,
                route: DEFAULT_ROUTE.into(),
            });
        }
        if let Some(key) = self
            .pagerduty_routing_key
            .as_deref()
            .filter(|k| !k.is_empty())
        {
            check_url("PAGERDUTY_URL", &self.pagerduty_url)?;
            sinks.push(SinkConfig {
                name: "pagerduty".into(),
                kind: Kind::PagerDuty {
                    url: self.pagerduty_url.clone(),
                    routing_key: key.into(),
                },
                min_severity: self.pagerduty_min_severity,
                route: DEFAULT_ROUTE.into(),
            });
        }
        let mut taken: std::collections::BTreeSet<String> =
            sinks.iter().map(|s| s.name.clone()).collect();
        let mut routes = std::collections::BTreeSet::from([DEFAULT_ROUTE.to_owned()]);
        route_sinks(
            "HEMOSTAT_NOTIFY_URLS",
            DEFAULT_ROUTE,
            Severity::Info,
            &crate::urls::split_list(&self.notify_urls),
            &mut taken,
            &mut sinks,
        )?;
        for spec in self
            .notify_routes
            .split(';')
            .filter(|r| !r.trim().is_empty())
        {
            let bad = |message: String| ConfigError {
                variable: "HEMOSTAT_NOTIFY_ROUTES",
                message,
            };
            let Some((name, rest)) = spec
                .split_once(':')
                .filter(|(n, rest)| !n.contains('/') && !rest.starts_with("//"))
            else {
                return Err(bad(
                    "a route is not `name: [severity=<least>] url ...` (e.g. `db: severity=warning pagerduty://KEY`)".into(),
                ));
            };
            let name = name.trim();
            if !crate::urls::valid_name(name) {
                return Err(bad(format!(
                    "route name {name:?} is not 1-40 of a-z, 0-9, '-' and '_'"
                )));
            }
            if !routes.insert(name.to_owned()) && name != DEFAULT_ROUTE {
                return Err(bad(format!("route {name} is listed twice")));
            }
            let mut least = Severity::Info;
            let mut urls = Vec::new();
            for word in crate::urls::split_list(rest) {
                match word.strip_prefix("severity=") {
                    Some(sev) => {
                        least =
                            parse_severity(sev).map_err(|e| bad(format!("route {name}: {e}")))?
                    }
                    None => urls.push(word),
                }
            }
            route_sinks(
                "HEMOSTAT_NOTIFY_ROUTES",
                name,
                least,
                &urls,
                &mut taken,
                &mut sinks,
            )?;
        }
        if sinks.len() > crate::urls::MAX_URLS {
            return Err(ConfigError {
                variable: "HEMOSTAT_NOTIFY_URLS",
                message: format!(
                    "{} sinks configured; at most {} (each has its own outbox and worker)",
                    sinks.len(),
                    crate::urls::MAX_URLS
                ),
            });
        }
        if self.sink_backoff_max < self.sink_backoff {
            return Err(ConfigError {
                variable: "HEMOSTAT_SINK_BACKOFF_MAX",
                message: format!(
                    "{:?} is below HEMOSTAT_SINK_BACKOFF ({:?})",
                    self.sink_backoff_max, self.sink_backoff
                ),
            });
        }
        if self.sink_timeout.is_zero() {
            return Err(ConfigError {
                variable: "HEMOSTAT_SINK_TIMEOUT",
                message: "0s is too short; expected e.g. 10s".into(),
            });
        }
        Ok(AlertConfig {
            sinks,
            routes,
            delivery: Delivery {
                timeout: self.sink_timeout,
                attempts: self.sink_attempts,
                backoff_initial: self.sink_backoff,
                backoff_max: self.sink_backoff_max,
                per_minute: self.sink_rate,
            },
            engine: EngineConfig {
                group_wait: self.group_wait,
                repeat_interval: self.repeat_interval,
            },
            sources: Sources {
                crashes: self.notify_crashes,
                false_alarms: self.notify_false_alarms,
            },
            dashboard_url: self.dashboard_url.clone().filter(|u| !u.is_empty()),
            history_retention: self.history_retention,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::config::parse_from;

    fn parse(args: &[&str]) -> Result<AlertConfig, String> {
        let mut all = vec!["hemostat-alert"];
        all.extend_from_slice(args);
        parse_from::<AlertArgs, _, _>(all)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn several_sinks_at_once() {
        let c = parse(&[
            "--slack-webhook-url",
            "https://hooks.slack.com/services/T/B/X",
            "--webhook-url",
            "http://127.0.0.1:1/hook",
            "--webhook-preset",
            "ntfy",
            "--pagerduty-routing-key",
            "R0UT1NG",
        ])
        .unwrap();
        let names: Vec<_> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["slack", "webhook-ntfy", "pagerduty"]);
        assert_eq!(c.history_retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn bad_values_name_their_variable_and_hide_secrets() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--slack-webhook-url", "hooks.slack.com/services/SECRETPART"],
                "SLACK_WEBHOOK_URL",
            ),
            (&["--webhook-url", "ftp://SECRETPART"], "WEBHOOK_URL"),
            (&["--webhook-preset", "carrier-pigeon"], "WEBHOOK_PRESET"),
            (&["--slack-min-severity", "loud"], "SLACK_MIN_SEVERITY"),
            (&["--group-wait", "a while"], "HEMOSTAT_GROUP_WAIT"),
            (&["--sink-attempts", "0"], "HEMOSTAT_SINK_ATTEMPTS"),
            (
                &["--history-retention", "forever"],
                "HEMOSTAT_HISTORY_RETENTION",
            ),
        ];
        for (args, var) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(var), "{args:?}: {err}");
            assert!(!err.contains("SECRETPART"), "{args:?} leaked: {err}");
        }
    }

    #[test]
    fn urls_and_routes_become_named_sinks() {
        let c = parse(&[
            "--slack-webhook-url",
            "https://hooks.slack.com/services/T/B/X",
            "--notify-urls",
            "slack://T/B/Y ntfy://alerts,telegram://1:x/10/20 json://h/hook?name=ops&severity=warning",
            "--notify-routes",
            "db: severity=warning slack://T/B/DB json://h/db?severity=critical; web: ntfy://web",
        ])
        .unwrap();
        let got: Vec<(String, String, Severity)> = c
            .sinks
            .iter()
            .map(|s| (s.name.clone(), s.route.clone(), s.min_severity))
            .collect();
        let want: Vec<(String, String, Severity)> = [
            ("slack", "default", Severity::Info),
            ("slack-2", "default", Severity::Info),
            ("ntfy", "default", Severity::Info),
            ("telegram", "default", Severity::Info),
            ("telegram-2", "default", Severity::Info),
            ("ops", "default", Severity::Warning),
            ("db-slack", "db", Severity::Warning),
            ("db-json", "db", Severity::Critical),
            ("web-ntfy", "web", Severity::Info),
        ]
        .iter()
        .map(|(n, r, s)| (n.to_string(), r.to_string(), *s))
        .collect();
        assert_eq!(got, want);
        assert_eq!(
            c.routes.iter().map(String::as_str).collect::<Vec<_>>(),
            ["db", "default", "web"]
        );
    }

    #[test]
    fn a_label_routes_a_notification_and_an_unknown_route_falls_back() {
        let routes: std::collections::BTreeSet<String> = ["default", "db", "web"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let n = |label: Option<&str>| {
            let mut c = hemostat_common::events::ContainerRef::default();
            if let Some(l) = label {
                c.labels.insert(LABEL_NOTIFY.into(), l.into());
            }
            crate::notify::Notification {
                fingerprint: String::new(),
                status: crate::notify::Status::Firing,
                severity: Severity::Critical,
                host: "h".into(),
                container: Some(c),
                kind: "died".into(),
                title: String::new(),
                text: String::new(),
                root_cause: None,
                action: None,
                outcome: None,
                confidence: None,
                method: None,
                dry_run: false,
                at: chrono::Utc::now(),
                event_id: String::new(),
                event_type: String::new(),
                page: false,
                one_off: false,
                proposal: None,
            }
        };
        let cases: &[(Option<&str>, &[&str])] = &[
            (None, &["default"]),
            (Some("db"), &["db"]),
            (Some(" db , web "), &["db", "web"]),
            (Some("nope"), &["default"]),
            (Some("db,nope"), &["db"]),
        ];
        for (label, want) in cases {
            let notification = n(*label);
            assert_eq!(routes_of(&notification, &routes), *want, "{label:?}");
        }
    }

    #[test]
    fn bad_routes_name_the_variable_and_hide_the_url() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--notify-urls", "slack://SECRETPART"],
                "HEMOSTAT_NOTIFY_URLS",
                "URL 1 of route default",
            ),
            (
                &["--notify-urls", "ntfy://t carrier://SECRETPART"],
                "HEMOSTAT_NOTIFY_URLS",
                "URL 2",
            ),
            (
                &["--notify-routes", "slack://T/B/SECRETPART"],
                "HEMOSTAT_NOTIFY_ROUTES",
                "name:",
            ),
            (
                &["--notify-routes", "Bad Name: ntfy://x"],
                "HEMOSTAT_NOTIFY_ROUTES",
                "route name",
            ),
            (
                &["--notify-routes", "db: ntfy://x; db: ntfy://y"],
                "HEMOSTAT_NOTIFY_ROUTES",
                "twice",
            ),
            (
                &["--notify-routes", "db: severity=loud ntfy://x"],
                "HEMOSTAT_NOTIFY_ROUTES",
                "severity",
            ),
            (
                &["--notify-routes", "db: json://h/x?name=Bad%21 "],
                "HEMOSTAT_NOTIFY_ROUTES",
                "name=",
            ),
        ];
        for (args, var, what) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(var) && err.contains(what), "{args:?}: {err}");
            assert!(!err.contains("SECRETPART"), "{args:?} leaked: {err}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("ntfy://topic{i}")).collect();
        let err = parse(&["--notify-urls", &many.join(" ")]).unwrap_err();
        assert!(err.contains("at most 64"), "{err}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let a = parse_from::<AlertArgs, _, _>([
            "x",
            "--slack-webhook-url",
            "https://hooks.slack.com/services/T/B/SECRETPART",
        ])
        .unwrap();
        assert!(!format!("{a:?}").contains("SECRETPART"));
        let c = a.validate().unwrap();
        assert!(!format!("{c:?}").contains("SECRETPART"));
    }
}
