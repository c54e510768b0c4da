//! One Redis user per service: what each may run, on which keys and channels.
//!
//! Every service may read everything under `hemostat:` (the dashboard shows it all; agents
//! read each other's recent history) but writes only what its job needs:
//!
//! - only the monitor adds health alerts and metrics;
//! - only the analyzer adds remediation requests and false alarms;
//! - only the responder adds results and owns locks, breakers, queues and its history;
//! - only the alert agent owns the notification state (its command line adds silences and
//!   maintenance windows, with their audit entries);
//! - the dashboard adds audit entries, silences and maintenance windows, a person's decision
//!   on a proposal (`hemostat:decision:*`) and a person's request ("restart now", on
//!   `hemostat:person_request`, which the responder judges like any other), may delete a
//!   breaker (a reset), asks a host (`XADD` to `hemostat:ask:*`, `BLPOP` on
//!   `hemostat:reply:*`), and nothing else: no analyzer verdict, no result, no lock;
//! - only the monitor reads the ask streams (as a consumer group) and writes replies; it may
//!   also ask (its `ask` command runs with its credentials).
//!
//! A consumer group changes the stream it reads (`XREADGROUP`, `XACK` are writes), so reading
//! a stream as a consumer is granted by a separate selector that allows only the consumer
//! commands on it: the analyzer may acknowledge a health alert, never add one.
//!
//! The same rules are passed to `redis-server` by the compose file (`--user ...`); a test
//! checks that the two agree, and the integration tests run the agents under them.

/// The services, by the name of their Redis user (`hemostat-<service>`).
pub const SERVICES: [&str; 5] = ["monitor", "analyzer", "responder", "alert", "dashboard"];

/// The Redis user of `service`.
pub fn user(service: &str) -> String {
    format!("hemostat-{service}")
}

/// Commands an agent may run (its keys and channels decide on what). No administration, no
/// `KEYS`, `FLUSHALL`, `CONFIG`, `DEBUG` or `ACL` (`-@dangerous`); `INFO` for the memory
/// check.
const AGENT_COMMANDS: &str = "-@all +@connection +@transaction +@read +@write +@stream +@hash \
     +@string +@sortedset +@set +@list +@keyspace +@pubsub +@scripting -@dangerous -function \
     -script|flush -script|kill +info";

/// What every agent writes: its heartbeat (key, stream, channel), dead letters, and its own
/// idempotency markers.
fn own(service: &str) -> String {
    format!(
        "%R~hemostat:* ~hemostat:heartbeat:{service}:* ~hemostat:stream:heartbeat \
         ~hemostat:stream:dead_letter ~hemostat:seen:{service}:* &hemostat:heartbeat"
    )
}

/// A selector that lets a consumer group read `streams` (claim, acknowledge, create its
/// group) and nothing more: no `XADD`, no `XDEL`, no `XTRIM`.
fn consumer(streams: &[&str]) -> String {
    let keys: Vec<String> = streams
        .iter()
        .map(|s| format!("~hemostat:stream:{s}"))
        .collect();
    format!(
        "({} -@all +xreadgroup +xack +xautoclaim +xclaim +xpending +xgroup|create \
         +xgroup|createconsumer +xinfo|groups +xinfo|stream)",
        keys.join(" ")
    )
}

/// The rules of `service`'s user after `on >password`, as `redis-server --user` and
/// `ACL SETUSER` take them (one argument each). `None` for an unknown service.
pub fn rules(service: &str) -> Option<Vec<String>> {
    let (commands, writes, channels, selectors): (&str, &[&str], &[&str], Vec<String>) =
        match service {
            "monitor" => (
                AGENT_COMMANDS,
                &[
                    "~hemostat:stream:health_alert",
                    "~hemostat:stream:metrics",
                    "~hemostat:reply:*",
                ],
                &["&hemostat:health_alert", "&hemostat:metrics"],
                // Asks to its host are read as a consumer group; `hemostat-monitor ask`, run in
                // the monitor's container with its credentials, adds one. Never deleted or
                // trimmed other than by the capped XADD.
                vec![
                    "(~hemostat:ask:* -@all +xadd +xreadgroup +xack +xgroup|create \
                     +xinfo|groups +xinfo|stream)"
                        .to_owned(),
                ],
            ),
            "analyzer" => (
                AGENT_COMMANDS,
                &[
                    "~hemostat:stream:remediation_needed",
                    "~hemostat:stream:false_alarm",
                    "~hemostat:stream:alerts",
                    "~hemostat:inflight:*",
                ],
                &[
                    "&hemostat:remediation_needed",
                    "&hemostat:false_alarm",
                    "&hemostat:alerts",
                ],
                vec![consumer(&["health_alert", "remediation_complete"])],
            ),
            "responder" => (
                AGENT_COMMANDS,
                &[
                    "~hemostat:stream:remediation_complete",
                    "~hemostat:stream:alerts",
                    "~hemostat:stream:audit",
                    "~hemostat:history:*",
                    "~hemostat:breaker:*",
                    "~hemostat:lock:*",
                    "~hemostat:storm:*",
                    "~hemostat:failing:*",
                    "~hemostat:writes:*",
                    "~hemostat:cleanup:*",
                    "~hemostat:jobs:*",
                    "~hemostat:job:*",
                    "~hemostat:proposal:*",
                    "~hemostat:proposals:*",
                    "~hemostat:approval_key",
                    // Written by the dashboard; the responder, its reader, trims it.
                    "~hemostat:stream:person_request",
                ],
                &["&hemostat:remediation_complete", "&hemostat:alerts"],
                vec![consumer(&["remediation_needed", "person_request"])],
            ),
            "alert" => (
                AGENT_COMMANDS,
                &[
                    "~hemostat:stream:notifications",
                    "~hemostat:alert:*",
                    "~hemostat:silences",
                    "~hemostat:maintenance",
                    // Its CLI's silences and maintenance windows are a person's actions, audited.
                    "~hemostat:stream:audit",
                ],
                &[],
                vec![consumer(&[
                    "health_alert",
                    "false_alarm",
                    "remediation_complete",
                    "alerts",
                ])],
            ),
            // Reads, its heartbeat, audit entries, silences; a breaker reset deletes the
            // breaker and its history and nothing else; the live feed subscribes to every
            // channel but may publish only its heartbeat.
            "dashboard" => (
                "-@all +@connection +@transaction +@read -@dangerous +info +xadd +set \
                 +pexpire +expire +del +hset +hdel +publish +eval +evalsha +script|load",
                &[
                    "~hemostat:stream:audit",
                    "~hemostat:silences",
                    "~hemostat:maintenance",
                    "~hemostat:decision:*",
                    "~hemostat:stream:person_request",
                ],
                &["&hemostat:person_request"],
                vec![
                    "(~hemostat:breaker:* ~hemostat:history:* -@all +del +exists)".to_owned(),
                    "(&hemostat:* -@all +psubscribe +punsubscribe +subscribe +unsubscribe)"
                        .to_owned(),
                    // Asking a host: add a request, wait for its reply.
                    "(~hemostat:ask:* -@all +xadd)".to_owned(),
                    "(~hemostat:reply:* -@all +blpop)".to_owned(),
                ],
            ),
            _ => return None,
        };
    let mut out = vec!["resetkeys".to_owned(), "resetchannels".to_owned()];
    out.extend(commands.split_whitespace().map(str::to_owned));
    out.extend(own(service).split_whitespace().map(str::to_owned));
    out.extend(writes.iter().map(|w| (*w).to_owned()));
    out.extend(channels.iter().map(|c| (*c).to_owned()));
    out.extend(selectors);
    Some(out)
}

/// The variable holding `service`'s Redis password: `HEMOSTAT_MONITOR_REDIS_PASSWORD`...
pub fn password_variable(service: &str) -> String {
    format!("HEMOSTAT_{}_REDIS_PASSWORD", service.to_ascii_uppercase())
}

/// A Redis ACL file: the default user (a person's: `redis-cli -a <REDIS_PASSWORD>`) with every
/// right, then one user per service with its rules. Only SHA-256 hashes of the passwords are
/// written (`#<hex>`), so the file itself gives no one a way in.
pub fn acl_file(admin_password: &str, passwords: &[(&str, String)]) -> String {
    // Redis's ACL files take no comments.
    let mut out = String::new();
    out.push_str(&format!(
        "user default on #{} ~* &* +@all\n",
        sha256_hex(admin_password)
    ));
    for (service, password) in passwords {
        let Some(rules) = rules(service) else {
            continue;
        };
        out.push_str(&format!(
            "user {} on #{} {}\n",
            user(service),
            sha256_hex(password),
            rules.join(" ")
        ));
    }
    out
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a password cannot be used.
fn check_password(variable: &str, value: Option<String>) -> Result<String, String> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Err(format!(
            "{variable} is not set; give it a password (e.g. `openssl rand -hex 24`)"
        ));
    };
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{variable} contains spaces or control characters; use printable characters only"
        ));
    }
    Ok(v)
}

/// `hemostat-<agent> redis-users FILE`: writes the ACL file for `redis-server --aclfile FILE`
/// from `REDIS_PASSWORD` (the default user) and `HEMOSTAT_<SERVICE>_REDIS_PASSWORD` (each
/// service), atomically (a temporary file, then a rename). The compose stack runs it once
/// before Redis starts. Exit 2 naming the variable when a password is missing.
pub fn redis_users_main(path: Option<String>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let Some(path) = path else {
        eprintln!("usage: redis-users FILE   (writes the Redis ACL file for hemostat's services)");
        return ExitCode::from(2);
    };
    let admin = match check_password("REDIS_PASSWORD", std::env::var("REDIS_PASSWORD").ok()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut passwords = Vec::new();
    for service in SERVICES {
        let variable = password_variable(service);
        match check_password(&variable, std::env::var(&variable).ok()) {
            Ok(p) => passwords.push((service, p)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let text = acl_file(&admin, &passwords);
    let tmp = format!("{path}.tmp");
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => {
            println!("wrote {} users to {path}", passwords.len() + 1);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {path}: {e}");
            ExitCode::from(1)
        }
    }
}

/// The streams `service` keeps within their retention (`XTRIM`, once a minute): the ones it
/// writes. The dashboard trims nothing (its user may not); a service without rules (a
/// deployment of its own) trims every stream.
pub fn trimmed_by(service: &str) -> Vec<&'static str> {
    let all = crate::bus::all_streams();
    if service == "dashboard" {
        return Vec::new();
    }
    match rules(service) {
        Some(r) => all
            .into_iter()
            .filter(|s| r.iter().any(|t| t.strip_prefix('~') == Some(*s)))
            .collect(),
        None => all,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_service_has_rules_and_only_the_analyzer_writes_requests() {
        for s in SERVICES {
            let r = rules(s).unwrap_or_default();
            assert!(r.len() > 5, "{s}");
            assert_eq!(r[0], "resetkeys");
            let writes_requests = r.iter().any(|t| t == "~hemostat:stream:remediation_needed");
            assert_eq!(writes_requests, s == "analyzer", "{s}");
            let writes_results = r
                .iter()
                .any(|t| t == "~hemostat:stream:remediation_complete");
            assert_eq!(writes_results, s == "responder", "{s}");
            assert!(
                !r.iter().any(|t| t == "~*" || t == "+@all" || t == "&*"),
                "{s}"
            );
        }
        assert!(rules("nobody").is_none());
    }

    #[test]
    fn the_acl_file_holds_hashes_never_passwords() {
        let f = acl_file(
            "admin-secret",
            &[
                ("monitor", "mon-secret".into()),
                ("dashboard", "dash-secret".into()),
            ],
        );
        assert!(!f.contains("secret"), "{f}");
        let lines: Vec<&str> = f.lines().filter(|l| l.starts_with("user ")).collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("user default on #") && lines[0].ends_with("~* &* +@all"));
        assert!(lines[1].starts_with("user hemostat-monitor on #"));
        assert!(lines[2].contains("(&hemostat:* -@all +psubscribe"));
        // sha256("admin-secret")
        assert!(lines[0].contains(&sha256_hex("admin-secret")));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            password_variable("monitor"),
            "HEMOSTAT_MONITOR_REDIS_PASSWORD"
        );
        assert!(
            check_password("X", None)
                .unwrap_err()
                .contains("X is not set")
        );
        assert!(check_password("X", Some("a b".into())).is_err());
        assert_eq!(check_password("X", Some("ok".into())), Ok("ok".into()));
    }

    #[test]
    fn each_stream_is_trimmed_by_a_writer() {
        assert_eq!(
            trimmed_by("monitor"),
            [
                "hemostat:stream:health_alert",
                "hemostat:stream:metrics",
                "hemostat:stream:heartbeat",
                "hemostat:stream:dead_letter"
            ]
        );
        assert!(trimmed_by("dashboard").is_empty());
        let mut covered: Vec<&str> = SERVICES.iter().flat_map(|s| trimmed_by(s)).collect();
        covered.sort_unstable();
        covered.dedup();
        let mut all = crate::bus::all_streams();
        all.sort_unstable();
        assert_eq!(covered, all);
        assert_eq!(trimmed_by("someone-else"), crate::bus::all_streams());
    }
}
