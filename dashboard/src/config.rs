//! The dashboard's settings: flags and environment (clap, `env` on every field), then checks
//! clap cannot make, with errors that name the variable.

use std::net::SocketAddr;

use clap::Parser;
use hemostat_common::config::{CommonArgs, ConfigError};

/// Shortest token accepted: a guessable token would make the actions an open door.
pub const MIN_TOKEN_LEN: usize = 16;

/// `hemostat-dashboard`: the web UI, JSON API and live feed.
///
/// The agents' shared `--listen` (`HEMOSTAT_LISTEN`, `/healthz` and `/metrics` only) is renamed
/// `--agent-listen` here: `--listen` (`HEMOSTAT_DASHBOARD_LISTEN`) is where the dashboard serves
/// its page, API and live feed.
#[derive(Clone, Parser)]
#[command(name = "hemostat-dashboard", version, about)]
#[command(mut_arg("listen", |a| a.long("agent-listen")))]
pub struct DashboardArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Where the UI, the JSON API (`/api/...`), the live feed, `/healthz` and `/metrics` are
    /// served.
    #[arg(
        id = "dashboard_listen",
        long = "listen",
        env = "HEMOSTAT_DASHBOARD_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub dashboard_listen: SocketAddr,

    /// Bearer token that unlocks the actions (reset a breaker, add or expire a silence).
    /// Unset or empty: the dashboard is read-only.
    #[arg(long, env = "HEMOSTAT_DASHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Bearer token that unlocks reading (the JSON API, the live feed and `/metrics` on the
    /// dashboard's port). Unset or empty: anyone who can reach the port may read. The action
    /// token, when set, reads too.
    #[arg(long, env = "HEMOSTAT_DASHBOARD_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,

    /// Host names the dashboard answers to, besides loopback (`localhost`, `*.localhost`) and
    /// IP addresses, comma-separated (`hemostat.example.org,ops-box`); `*` answers to any name.
    /// A request naming another host gets 403: a page on another site cannot reach the
    /// dashboard by pointing a name of its own at this address (DNS rebinding).
    #[arg(long, env = "HEMOSTAT_DASHBOARD_HOSTS", default_value = "")]
    pub hosts: String,

    /// How many entries are read from each stream per request (newest first, `XREVRANGE ...
    /// COUNT`): the depth of the timeline and of the 24 h numbers.
    #[arg(long, env = "HEMOSTAT_DASHBOARD_HISTORY", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub history: u64,

    /// Points in each container's CPU and memory sparkline.
    #[arg(long, env = "HEMOSTAT_DASHBOARD_SPARKLINE_POINTS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(2..=500))]
    pub sparkline_points: u64,
}

impl std::fmt::Debug for DashboardArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardArgs")
            .field("common", &self.common)
            .field("dashboard_listen", &self.dashboard_listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("read_token", &self.read_token.as_ref().map(|_| "<set>"))
            .field("hosts", &self.hosts)
            .field("history", &self.history)
            .field("sparkline_points", &self.sparkline_points)
            .finish()
    }
}

/// The secret that unlocks actions. Its `Debug` never shows it, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The secret itself, for the comparison in [`crate::auth`] only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    /// `None`: read-only.
    pub token: Option<Token>,
    /// `None`: reading needs no token.
    pub read_token: Option<Token>,
    /// Which `Host` names are answered.
    pub hosts: AllowedHosts,
    pub history: usize,
    pub sparkline_points: usize,
}

impl DashboardArgs {
    /// Checks the common settings and the token; the error names the variable.
    pub fn validate(&self) -> Result<DashboardConfig, ConfigError> {
        self.common.validate()?;
        Ok(DashboardConfig {
            listen: self.dashboard_listen,
            token: parse_token("HEMOSTAT_DASHBOARD_TOKEN", self.token.as_deref())?,
            read_token: parse_token("HEMOSTAT_DASHBOARD_READ_TOKEN", self.read_token.as_deref())?,
            hosts: parse_hosts(&self.hosts)?,
            history: self.history as usize,
            sparkline_points: self.sparkline_points as usize,
        })
    }
}

/// Empty counts as unset (compose passes `HEMOSTAT_DASHBOARD_TOKEN=` when the user set none).
/// The messages describe the token, never quote it.
pub fn parse_token(
    variable: &'static str,
    raw: Option<&str>,
) -> Result<Option<Token>, ConfigError> {
    let Some(raw) = raw.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let err = |message: String| ConfigError { variable, message };
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(
            "contains spaces or characters that cannot travel in an HTTP header; use printable \
             ASCII, e.g. the output of `openssl rand -hex 24`"
                .into(),
        ));
    }
    if raw.len() < MIN_TOKEN_LEN {
        return Err(err(format!(
            "is too short ({} characters); use at least {MIN_TOKEN_LEN} random characters, e.g. \
             the output of `openssl rand -hex 24`",
            raw.len()
        )));
    }
    Ok(Some(Token(raw.to_owned())))
}

/// The `Host` names the dashboard answers to, besides loopback names and IP addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// `*`: any name.
    Any,
    /// These names, lower-case, without a port.
    Names(Vec<String>),
}

/// `a.example,b` → those names; `*` → any; empty → loopback and IP addresses only.
pub fn parse_hosts(raw: &str) -> Result<AllowedHosts, ConfigError> {
    let mut names = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if item == "*" {
            return Ok(AllowedHosts::Any);
        }
        let valid = item.len() <= 253
            && item
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(ConfigError {
                variable: "HEMOSTAT_DASHBOARD_HOSTS",
                message: format!(
                    "{item:?} is not a host name; give names without scheme or port, \
                     comma-separated (`hemostat.example.org,ops-box`), or `*` for any"
                ),
            });
        }
        names.push(item.to_ascii_lowercase());
    }
    Ok(AllowedHosts::Names(names))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::config::parse_from;

    #[test]
    fn defaults_and_the_two_listen_flags() {
        let a: DashboardArgs = parse_from(["d", "--token="]).unwrap();
        let cfg = a.validate().unwrap();
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:8080");
        assert!(cfg.token.is_none());
        assert_eq!(cfg.history, 500);
        let a: DashboardArgs = parse_from([
            "d",
            "--listen=127.0.0.1:1",
            "--agent-listen=127.0.0.1:2",
            "--token=",
        ])
        .unwrap();
        assert_eq!(a.dashboard_listen.to_string(), "127.0.0.1:1");
        assert_eq!(a.common.listen_for("dashboard").to_string(), "127.0.0.1:2");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = parse_from::<DashboardArgs, _, _>(["d", "--listen=nowhere"]).unwrap_err();
        assert!(e.to_string().contains("HEMOSTAT_DASHBOARD_LISTEN"), "{e}");
        let e = parse_from::<DashboardArgs, _, _>(["d", "--history=5"]).unwrap_err();
        assert!(e.to_string().contains("HEMOSTAT_DASHBOARD_HISTORY"), "{e}");
        let e = parse_from::<DashboardArgs, _, _>(["d", "--sparkline-points=1"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("HEMOSTAT_DASHBOARD_SPARKLINE_POINTS"),
            "{e}"
        );
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        const V: &str = "HEMOSTAT_DASHBOARD_TOKEN";
        assert!(parse_token(V, None).unwrap().is_none());
        assert!(parse_token(V, Some("  ")).unwrap().is_none());
        let e = parse_token(V, Some("short-secret")).unwrap_err();
        assert_eq!(e.variable, "HEMOSTAT_DASHBOARD_TOKEN");
        assert!(!e.to_string().contains("short-secret"), "{e}");
        let e = parse_token(V, Some("has a space in the middle ok")).unwrap_err();
        assert!(!e.to_string().contains("middle"), "{e}");
        let t = parse_token(V, Some("0123456789abcdef-secret"))
            .unwrap()
            .unwrap();
        assert_eq!(t.expose(), "0123456789abcdef-secret");
        assert!(!format!("{t:?}").contains("secret"));
        let a: DashboardArgs = parse_from(["d", "--token=0123456789abcdef-secret"]).unwrap();
        assert!(!format!("{a:?}").contains("0123456789abcdef"));
        let cfg = a.validate().unwrap();
        assert!(!format!("{cfg:?}").contains("0123456789abcdef"));
        let a: DashboardArgs = parse_from(["d", "--read-token=fedcba9876543210-reader"]).unwrap();
        assert!(!format!("{a:?}").contains("fedcba98"));
        let cfg = a.validate().unwrap();
        assert!(!format!("{cfg:?}").contains("fedcba98"));
        assert_eq!(cfg.read_token.unwrap().expose(), "fedcba9876543210-reader");
        let a: DashboardArgs = parse_from(["d", "--read-token=short"]).unwrap();
        let e = a.validate().unwrap_err();
        assert_eq!(e.variable, "HEMOSTAT_DASHBOARD_READ_TOKEN");
    }

    #[test]
    fn host_names_are_checked() {
        assert_eq!(parse_hosts("").unwrap(), AllowedHosts::Names(vec![]));
        assert_eq!(
            parse_hosts(" Ops.Example.org , box ").unwrap(),
            AllowedHosts::Names(vec!["ops.example.org".into(), "box".into()])
        );
        assert_eq!(parse_hosts("a,*").unwrap(), AllowedHosts::Any);
        for bad in ["http://a", "a:8080", "a b", "a/b"] {
            let e = parse_hosts(bad).unwrap_err();
            assert_eq!(e.variable, "HEMOSTAT_DASHBOARD_HOSTS", "{bad}");
        }
    }
}
