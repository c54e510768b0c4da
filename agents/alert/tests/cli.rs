//! The alert binary's start-up contract: bad settings stop it with exit code 2 naming the
//! variable, webhook URLs and keys are never printed, and `test` reports per sink.

use std::process::Command;

fn alert(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hemostat-alert"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the alert service: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_settings_exit_2_naming_the_variable_without_the_secret() {
    let cases = [
        (
            "SLACK_WEBHOOK_URL",
            "hooks.slack.com/services/T0/B0/SECRETPART",
        ),
        ("WEBHOOK_URL", "mailto:SECRETPART"),
        ("WEBHOOK_PRESET", "pigeon"),
        ("SLACK_MIN_SEVERITY", "loud"),
        ("HEMOSTAT_GROUP_WAIT", "eventually"),
        (
            "HEMOSTAT_NOTIFY_URLS",
            "slack://T0/B0/X carrier://SECRETPART",
        ),
        (
            "HEMOSTAT_NOTIFY_URLS",
            "mailto://user:SECRETPART@smtp.example.com",
        ),
        ("HEMOSTAT_NOTIFY_ROUTES", "db: telegram://SECRETPART"),
    ];
    for (var, value) in cases {
        let (code, text) = alert(&[(var, value)], &[]);
        assert_eq!(code, 2, "{var}={value}: exit {code}\n{text}");
        assert!(
            text.contains(var),
            "{var}={value}: message does not name it:\n{text}"
        );
        assert!(
            !text.contains("SECRETPART"),
            "{var}: the secret was printed:\n{text}"
        );
    }
}

#[test]
fn help_hides_secret_values() {
    let (code, help) = alert(
        &[(
            "SLACK_WEBHOOK_URL",
            "https://hooks.slack.com/services/T0/B0/SECRETPART",
        )],
        &["--help"],
    );
    assert_eq!(code, 0, "{help}");
    assert!(help.contains("SLACK_WEBHOOK_URL") && help.contains("PAGERDUTY_ROUTING_KEY"));
    assert!(!help.contains("SECRETPART"), "{help}");
}

#[test]
fn test_command_reports_an_unreachable_sink_without_its_url() {
    // Port 9 on loopback: nothing listens there (discard), so the connection is refused.
    let (code, text) = alert(
        &[
            (
                "SLACK_WEBHOOK_URL",
                "http://127.0.0.1:9/services/T0/B0/SECRETPART",
            ),
            ("HEMOSTAT_SINK_ATTEMPTS", "1"),
            ("HEMOSTAT_SINK_TIMEOUT", "2s"),
        ],
        &["test"],
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("slack (slack, route default): FAILED"),
        "{text}"
    );
    assert!(!text.contains("SECRETPART"), "{text}");
    let (code, text) = alert(&[], &["test"]);
    assert_eq!(code, 1);
    assert!(text.contains("no sink configured"), "{text}");
}
