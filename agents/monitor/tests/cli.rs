//! The monitor binary's start-up contract: a bad setting stops it with exit code 2 and a
//! message naming the variable and what would be valid; `--help` documents every variable.

use std::process::Command;

fn monitor(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hemostat-monitor"));
    // Nothing from the developer's shell or a .env file may leak into these cases.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the monitor: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let cases = [
        ("HEMOSTAT_STATS_INTERVAL", "soon", "expected e.g. 10s"),
        ("HEMOSTAT_CPU_THRESHOLD", "150", "(0, 100]"),
        ("HEMOSTAT_MONITOR_ALL", "perhaps", "perhaps"),
        ("REDIS_URL", "mysql://db:3306", "redis://"),
        ("LOG_FORMAT", "xml", "json"),
        ("HEMOSTAT_LISTEN", "not-an-address", "not-an-address"),
        ("HEMOSTAT_BREACH_SAMPLES", "0", "1..=1000"),
        ("HEMOSTAT_LOG_BYTES", "10", "256..=65536"),
        ("HEMOSTAT_HOST_BREACH_SAMPLES", "0", "from 1 to 1000"),
        ("HEMOSTAT_SCOPE_LABEL", "shop", "key=value"),
        ("HEMOSTAT_RESTART_SETTLE", "100ms", "at least 250ms"),
        ("HEMOSTAT_STARTUP_LOOKBACK", "200h", "at most"),
        ("REDIS_SENTINELS", "sentinel-1", "host:port"),
        (
            "REDIS_SENTINELS",
            "sentinel-1:26379,sentinel-2:port",
            "host:port",
        ),
    ];
    for (var, value, hint) in cases {
        let (code, text) = monitor(&[(var, value)]);
        assert_eq!(code, 2, "{var}={value}: exit {code}\n{text}");
        assert!(
            text.contains(var),
            "{var}={value}: message does not name it:\n{text}"
        );
        assert!(
            text.contains(hint),
            "{var}={value}: no hint {hint:?}:\n{text}"
        );
    }
}

#[test]
fn a_password_in_a_bad_redis_url_is_not_printed() {
    let (code, text) = monitor(&[("REDIS_URL", "http://:hunter2@redis:6379")]);
    assert_eq!(code, 2, "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn a_sentinel_password_is_not_printed() {
    let (code, text) = monitor(&[
        ("REDIS_SENTINELS", "sentinel-1"),
        ("REDIS_SENTINEL_PASSWORD", "hunter2"),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("REDIS_SENTINELS"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn help_lists_every_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_hemostat-monitor"))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the monitor: {e}"));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "REDIS_URL",
        "HEMOSTAT_HOST_ID",
        "LOG_FORMAT",
        "HEMOSTAT_LISTEN",
        "HEMOSTAT_MONITOR_ALL",
        "HEMOSTAT_SCOPE_LABEL",
        "HEMOSTAT_RESTART_SETTLE",
        "HEMOSTAT_STARTUP_LOOKBACK",
        "HEMOSTAT_HOST_BREACH_SAMPLES",
        "HEMOSTAT_STATS_INTERVAL",
        "HEMOSTAT_CPU_THRESHOLD",
        "HEMOSTAT_MEMORY_THRESHOLD",
        "HEMOSTAT_BREACH_SAMPLES",
        "HEMOSTAT_REMINDER_INTERVAL",
        "HEMOSTAT_DISK_THRESHOLD",
        "REDIS_SENTINELS",
        "REDIS_SENTINEL_MASTER",
        "REDIS_SENTINEL_PASSWORD",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
}
