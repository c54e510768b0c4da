//! The responder binary's start-up contract: a bad setting stops it with exit code 2 and a
//! message naming the variable; `--help` documents the safety settings.

use std::process::Command;

fn responder(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hemostat-responder"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the responder: {e}"));
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
        ("HEMOSTAT_DRY_RUN", "perhaps", "perhaps"),
        ("HEMOSTAT_BACKOFF_INITIAL", "later", "expected e.g. 10s"),
        ("HEMOSTAT_BREAKER_THRESHOLD", "0", "1..=1000"),
        ("HEMOSTAT_STORM_SHARE", "1.5", "(0, 1]"),
        ("HEMOSTAT_CLEANUP_VOLUMES", "sure", "sure"),
    ];
    for (var, value, hint) in cases {
        let (code, text) = responder(&[(var, value)], &[]);
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
fn help_documents_the_safety_settings_and_the_reset_command() {
    let (code, help) = responder(&[], &["--help"]);
    assert_eq!(code, 0, "{help}");
    for needle in [
        "HEMOSTAT_DRY_RUN",
        "HEMOSTAT_BACKOFF_INITIAL",
        "HEMOSTAT_BREAKER_THRESHOLD",
        "HEMOSTAT_STORM_THRESHOLD",
        "HEMOSTAT_CLEANUP_VOLUMES",
        "reset-breaker",
    ] {
        assert!(
            help.contains(needle),
            "--help does not mention {needle}:\n{help}"
        );
    }
}
