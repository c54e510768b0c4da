//! Which containers hemostat watches, which it must never touch, and which labels travel with
//! an alert.

use std::collections::{BTreeMap, HashMap};

use clap::Args;

use crate::config::ConfigError;

/// Opt-in label: `true` includes a container, `false` always excludes it.
pub const LABEL_ENABLE: &str = "hemostat.enable";
/// Protection label: alert only, never remediated.
pub const LABEL_PROTECT: &str = "hemostat.protect";
/// Marks hemostat's own services (set in our compose file); they are always protected.
pub const LABEL_ROLE: &str = "hemostat.role";
/// Per-container overrides.
pub const LABEL_CPU_THRESHOLD: &str = "hemostat.cpu_threshold";
pub const LABEL_MEMORY_THRESHOLD: &str = "hemostat.memory_threshold";
/// Seconds Docker waits between SIGTERM and SIGKILL when the responder stops or restarts it.
pub const LABEL_STOP_TIMEOUT: &str = "hemostat.stop_timeout";
/// Name of a container this one depends on: restarted after that one is.
pub const LABEL_DEPENDS_ON: &str = "hemostat.depends_on";

fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Whether a container with these labels is watched.
pub fn in_scope(labels: &HashMap<String, String>, monitor_all: bool) -> bool {
    match labels.get(LABEL_ENABLE).and_then(|v| truthy(v)) {
        Some(enabled) => enabled,
        None => monitor_all,
    }
}

/// Which containers hemostat watches and may act on: the opt-in rule of [`in_scope`], and, when
/// set, one label every container in scope must carry (for example
/// `com.docker.compose.project=shop`, so that several hemostat stacks can share one engine
/// without touching each other's containers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Watch containers without a `hemostat.enable` label too.
    pub monitor_all: bool,
    /// `key` and `value` of a label every container in scope must carry.
    pub require: Option<(String, String)>,
}

impl Scope {
    /// Whether a container with these labels is in scope.
    pub fn contains(&self, labels: &HashMap<String, String>) -> bool {
        in_scope(labels, self.monitor_all)
            && self
                .require
                .as_ref()
                .is_none_or(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Parses `key=value` (the value may be empty, the key may not) for `HEMOSTAT_SCOPE_LABEL`.
pub fn parse_label_selector(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!(
            "{raw:?} is not a label selector; expected key=value, e.g. com.docker.compose.project=shop"
        )),
    }
}

/// Which containers are in scope, for the agents that look at containers (the monitor and the
/// responder must agree, so both flatten this).
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Watch every container, not only those labelled `hemostat.enable=true`
    /// (`hemostat.enable=false` and protection still apply).
    #[arg(long, env = "HEMOSTAT_MONITOR_ALL", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(),
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub monitor_all: bool,

    /// Only containers with this label (`key=value`, e.g. `com.docker.compose.project=shop`)
    /// are in scope, on top of the rule above: several hemostat stacks can share one engine.
    /// Empty means no such restriction.
    #[arg(long, env = "HEMOSTAT_SCOPE_LABEL")]
    pub scope_label: Option<String>,
}

impl ScopeArgs {
    /// The scope these flags describe, or the error that names the bad variable.
    pub fn scope(&self) -> Result<Scope, ConfigError> {
        let require = match self.scope_label.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(parse_label_selector(raw).map_err(|message| ConfigError {
                variable: "HEMOSTAT_SCOPE_LABEL",
                message,
            })?),
        };
        Ok(Scope {
            monitor_all: self.monitor_all,
            require,
        })
    }
}

/// Whether a container must never be acted on (it is still watched and alerted on).
pub fn is_protected(labels: &HashMap<String, String>) -> bool {
    labels.get(LABEL_PROTECT).and_then(|v| truthy(v)) == Some(true)
        || labels.contains_key(LABEL_ROLE)
}

/// The labels that travel with alerts: `hemostat.*` and compose's project and service.
pub fn relevant_labels(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| {
            k.starts_with("hemostat.")
                || k.as_str() == "com.docker.compose.project"
                || k.as_str() == "com.docker.compose.service"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A percentage label override, if present and valid; an invalid one is logged and ignored
/// (a typo on one container must not stop the monitor).
pub fn percent_label(labels: &HashMap<String, String>, key: &str) -> Option<f64> {
    let raw = labels.get(key)?;
    match crate::config::parse_percent(raw) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(label = key, error = %e, "ignoring invalid label");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn scope_rules() {
        let cases = [
            (vec![], false, false),
            (vec![], true, true),
            (vec![(LABEL_ENABLE, "true")], false, true),
            (vec![(LABEL_ENABLE, "TRUE")], false, true),
            (vec![(LABEL_ENABLE, "false")], true, false),
            (vec![(LABEL_ENABLE, "0")], true, false),
            (vec![(LABEL_ENABLE, "maybe")], false, false),
            (vec![(LABEL_ENABLE, "maybe")], true, true),
        ];
        for (l, all, want) in cases {
            assert_eq!(in_scope(&labels(&l), all), want, "{l:?} all={all}");
        }
    }

    #[test]
    fn a_required_label_narrows_the_scope() {
        let shop = Scope {
            monitor_all: true,
            require: Some(("com.docker.compose.project".into(), "shop".into())),
        };
        let cases = [
            (vec![("com.docker.compose.project", "shop")], true),
            (vec![("com.docker.compose.project", "blog")], false),
            (vec![], false),
            (
                vec![
                    ("com.docker.compose.project", "shop"),
                    (LABEL_ENABLE, "false"),
                ],
                false,
            ),
        ];
        for (l, want) in cases {
            assert_eq!(shop.contains(&labels(&l)), want, "{l:?}");
        }
        assert!(Scope::default().contains(&labels(&[(LABEL_ENABLE, "true")])));
        assert!(!Scope::default().contains(&labels(&[])));
    }

    #[test]
    fn label_selectors_parse() {
        assert_eq!(parse_label_selector("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_label_selector("a="), Ok(("a".into(), String::new())));
        assert!(parse_label_selector("=b").is_err());
        assert!(parse_label_selector("ab").is_err());
    }

    #[test]
    fn protection() {
        assert!(!is_protected(&labels(&[])));
        assert!(is_protected(&labels(&[(LABEL_PROTECT, "true")])));
        assert!(!is_protected(&labels(&[(LABEL_PROTECT, "false")])));
        assert!(is_protected(&labels(&[(LABEL_ROLE, "monitor")])));
    }

    #[test]
    fn only_relevant_labels_travel() {
        let l = labels(&[
            ("hemostat.enable", "true"),
            ("com.docker.compose.service", "web"),
            ("com.docker.compose.config-hash", "abc"),
            ("maintainer", "someone"),
        ]);
        let r = relevant_labels(&l);
        assert_eq!(
            r.keys().collect::<Vec<_>>(),
            ["com.docker.compose.service", "hemostat.enable"]
        );
    }

    #[test]
    fn label_overrides() {
        let l = labels(&[
            (LABEL_CPU_THRESHOLD, "50"),
            (LABEL_MEMORY_THRESHOLD, "lots"),
        ]);
        assert_eq!(percent_label(&l, LABEL_CPU_THRESHOLD), Some(50.0));
        assert_eq!(percent_label(&l, LABEL_MEMORY_THRESHOLD), None);
    }
}
