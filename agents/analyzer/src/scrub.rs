//! Scrubbing secrets out of text before it goes anywhere (an LLM prompt, a log line, an
//! event): bearer tokens, API keys, AWS keys, passwords in URLs, `password=`-style pairs, JWTs
//! and private-key blocks. Then trimming to a byte budget, keeping the newest lines.

use std::sync::LazyLock;

use regex::Regex;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

struct Pattern {
    re: Regex,
    /// The replacement, with `$1`-style groups kept (e.g. the key name of a `key=value` pair).
    with: &'static str,
}

fn pattern(re: &str, with: &'static str) -> Option<Pattern> {
    // The patterns are constants checked by the tests; a bad one is skipped, not a panic.
    Regex::new(re).ok().map(|re| Pattern { re, with })
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    [
        // PEM private keys, whole block (also a block cut off by the log tail).
        pattern(
            r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
            "[REDACTED PRIVATE KEY]",
        ),
        // JSON Web Tokens: three base64url parts, the first two starting with {" (eyJ).
        pattern(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}", REDACTED),
        // Authorization headers and bearer tokens.
        pattern(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}", "$1 [REDACTED]"),
        // AWS access key ids and secret keys.
        pattern(r"\b(AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[A-Z0-9]{16}\b", REDACTED),
        pattern(
            r"(?i)(aws_secret_access_key|aws_session_token)(\s*[=:]\s*)[A-Za-z0-9/+=]{16,}",
            "$1$2[REDACTED]",
        ),
        // Well-known key shapes: OpenAI/Anthropic-style sk-, GitHub, Slack, Google, Stripe.
        pattern(r"\bsk-[A-Za-z0-9_-]{16,}", REDACTED),
        pattern(r"\bgh[pousr]_[A-Za-z0-9]{20,}", REDACTED),
        pattern(r"\bxox[abposr]-[A-Za-z0-9-]{10,}", REDACTED),
        pattern(r"\bAIza[0-9A-Za-z_-]{30,}", REDACTED),
        pattern(r"\b[rs]k_(live|test)_[A-Za-z0-9]{16,}", REDACTED),
        // Slack and Discord webhook URLs carry their secret in the path.
        pattern(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+", "https://hooks.slack.com/services/[REDACTED]"),
        pattern(r"https://(discord(app)?\.com)/api/webhooks/[A-Za-z0-9/_-]+", "https://$1/api/webhooks/[REDACTED]"),
        // Passwords in URLs: scheme://user:password@host.
        pattern(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", "${1}[REDACTED]@"),
        // key=value and key: value pairs whose key says secret.
        pattern(
            r#"(?i)\b([a-z0-9_.-]*(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?|auth)[a-z0-9_.-]*)(["']?\s*[=:]\s*["']?)([^\s"',;&]+)"#,
            "$1$3[REDACTED]",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
});

/// Replaces every secret-looking part of `text` with [`REDACTED`].
pub fn scrub(text: &str) -> String {
    let mut out = text.to_owned();
    for p in PATTERNS.iter() {
        if p.re.is_match(&out) {
            out = p.re.replace_all(&out, p.with).into_owned();
        }
    }
    out
}

/// Keeps the newest lines of `lines` that fit in `budget` bytes (after scrubbing), oldest
/// first, and says how many were dropped.
pub fn scrub_and_trim(lines: &[String], budget: usize) -> (Vec<String>, usize) {
    let mut kept = Vec::new();
    let mut used = 0;
    for line in lines.iter().rev() {
        let clean = scrub(line.trim_end());
        let cost = clean.len() + 1;
        if used + cost > budget {
            break;
        }
        used += cost;
        kept.push(clean);
    }
    kept.reverse();
    let dropped = lines.len() - kept.len();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// `(input, must not survive, must survive)`.
    const CASES: &[(&str, &str, &str)] = &[
        (
            "Authorization: Bearer abcdef0123456789xyz",
            "abcdef0123456789xyz",
            "Authorization",
        ),
        (
            "curl -H 'token ghp_abcdefghijklmnopqrstuvwxyz0123'",
            "ghp_abcdefghijklmnopqrstuvwxyz0123",
            "curl",
        ),
        (
            "using key AKIAIOSFODNN7EXAMPLE for s3",
            "AKIAIOSFODNN7EXAMPLE",
            "for s3",
        ),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG",
            "aws_secret_access_key",
        ),
        (
            "OPENAI_API_KEY=sk-proj-abcdefghijklmnop1234",
            "sk-proj-abcdefghijklmnop1234",
            "OPENAI_API_KEY",
        ),
        (
            "connecting to postgres://app:hunter2@db:5432/app",
            "hunter2",
            "postgres://app:",
        ),
        (
            "redis://:s3cretpass@redis:6379",
            "s3cretpass",
            "@redis:6379",
        ),
        (
            "login failed password=hunter2 user=bob",
            "hunter2",
            "user=bob",
        ),
        (
            "{\"db_password\": \"correct-horse\"}",
            "correct-horse",
            "db_password",
        ),
        ("SECRET_KEY: abc123def456", "abc123def456", "SECRET_KEY"),
        ("api-key=0123456789abcdef", "0123456789abcdef", "api-key"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "dozjgNryP4J3jVmNHl0w5N",
            "jwt",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----\nnext line",
            "MIIEowIBAAKCAQEA7",
            "next line",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg (cut by the tail)",
            "MIIEvQIBADANBg",
            "[REDACTED PRIVATE KEY]",
        ),
        (
            "slack https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXX",
            "XXXXXXXXXXXX",
            "hooks.slack.com",
        ),
        (
            "xoxb-123456789012-abcdefghij",
            "xoxb-123456789012-abcdefghij",
            "",
        ),
    ];

    #[test]
    fn secrets_are_removed_and_context_kept() {
        for (input, secret, kept) in CASES {
            let out = scrub(input);
            assert!(
                !out.contains(secret),
                "{input:?} → {out:?} still has {secret:?}"
            );
            assert!(out.contains(kept), "{input:?} → {out:?} lost {kept:?}");
        }
    }

    #[test]
    fn ordinary_lines_are_untouched() {
        for line in [
            "GET /healthz 200 1.2ms",
            "panic: runtime error: index out of range [3] with length 3",
            "Killed process 1234 (java) total-vm:2048000kB",
            "connected to redis://redis:6379/0",
            "the token bucket refilled",
        ] {
            assert_eq!(scrub(line), line);
        }
    }

    #[test]
    fn trimming_keeps_the_newest_lines_within_budget() {
        let lines: Vec<String> = (0..100).map(|i| format!("line {i:03}")).collect();
        let (kept, dropped) = scrub_and_trim(&lines, 45);
        assert_eq!(
            kept,
            ["line 095", "line 096", "line 097", "line 098", "line 099"]
        );
        assert_eq!(dropped, 95);
        let (kept, dropped) = scrub_and_trim(&lines[..2], 1000);
        assert_eq!((kept.len(), dropped), (2, 0));
    }
}
