//! Keeping secrets out of logs: URLs with passwords, tokens, keys.

/// Replaces the password (and a user name that looks like a token) of a URL with `***`.
/// `redis://:hunter2@redis:6379/0` → `redis://:***@redis:6379/0`.
pub fn url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let rest = &raw[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &authority[..at];
    let redacted = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => "***".to_owned(),
    };
    format!("{}{}@{}", &raw[..scheme_end + 3], redacted, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
            (
                "rediss://user:pa%40ss@host:6380",
                "rediss://user:***@host:6380",
            ),
            ("redis://token@host/1", "redis://***@host/1"),
            ("not a url", "not a url"),
            ("http://host/path@x", "http://host/path@x"),
        ];
        for (input, want) in cases {
            assert_eq!(url(input), want, "{input}");
        }
    }
}
