//! The analyzer binary's start-up contract: a bad setting stops it with exit code 2 and a
//! message naming the variable; the API key is never printed.

use std::process::Command;

fn analyzer(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hemostat-analyzer"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the analyzer: {e}"));
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
        ("ANALYZER_CONFIDENCE_THRESHOLD", "2", "0 to 1"),
        ("OPENAI_BASE_URL", "localhost:11434", "http(s) URL"),
        ("HEMOSTAT_LLM_TIMEOUT", "forever", "expected e.g. 10s"),
        ("HEMOSTAT_LLM_RATE", "0", "1..=100000"),
        ("HEMOSTAT_CRASH_LOOP_BUDGET", "0", "1..=1000"),
        ("REDIS_URL", "mysql://db", "redis://"),
    ];
    for (var, value, hint) in cases {
        let (code, text) = analyzer(&[(var, value)]);
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
fn the_api_key_is_not_printed_with_a_config_error() {
    let (code, text) = analyzer(&[
        ("OPENAI_API_KEY", "sk-do-not-print-me-0123456789"),
        ("ANALYZER_CONFIDENCE_THRESHOLD", "7"),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(!text.contains("do-not-print-me"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_hemostat-analyzer"))
        .arg("--help")
        .env("OPENAI_API_KEY", "sk-do-not-print-me-0123456789")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the analyzer: {e}"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("OPENAI_API_KEY"));
    assert!(
        !help.contains("do-not-print-me"),
        "--help shows the key:\n{help}"
    );
}
