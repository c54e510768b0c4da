//! Who may act: a bearer token compared in constant time, or nobody when none is configured.
//! Who may read: anyone, or the holders of the read (or action) token when one is configured.
//! Which names are answered: loopback, IP addresses and the configured host names.
//!
//! The token travels in an `Authorization` header set by the page's JavaScript, never in a
//! cookie, so another site cannot make a visitor's browser act (no CSRF by construction). The
//! `Host` check closes the other door: a page on another site that points a name of its own at
//! this address (DNS rebinding) sends that name, and is refused.

use std::net::IpAddr;

use crate::config::{AllowedHosts, Token};

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token is configured: the dashboard is read-only (HTTP 403).
    ReadOnly,
    /// A token is configured and the request did not carry it (HTTP 401).
    BadToken,
    /// A read token is configured and the request carried neither it nor the action token
    /// (HTTP 401).
    NoReadToken,
}

impl Denied {
    /// What the page shows.
    pub fn message(self) -> &'static str {
        match self {
            Denied::ReadOnly => {
                "read-only: actions are disabled because HEMOSTAT_DASHBOARD_TOKEN is not set on \
                 the dashboard"
            }
            Denied::BadToken => {
                "not authorized: send the dashboard token as `Authorization: Bearer <token>` \
                 (enter it under Actions)"
            }
            Denied::NoReadToken => {
                "not authorized: reading needs the dashboard's read token (or its action token) as \
                 `Authorization: Bearer <token>`; enter it under Actions"
            }
        }
    }
}

/// Decides whether a request with this `Authorization` header may act.
pub fn authorize(configured: Option<&Token>, header: Option<&str>) -> Result<(), Denied> {
    let Some(token) = configured else {
        return Err(Denied::ReadOnly);
    };
    let presented = header.and_then(bearer).ok_or(Denied::BadToken)?;
    if constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Denied::BadToken)
    }
}

/// Decides whether a request may read: always when no read token is configured, otherwise
/// with the read token or the action token, from the `Authorization` header or (for the live
/// feed, which a browser's `EventSource` opens without headers) the `access_token` query value.
pub fn authorize_read(
    read: Option<&Token>,
    action: Option<&Token>,
    header: Option<&str>,
    query: Option<&str>,
) -> Result<(), Denied> {
    let Some(read) = read else {
        return Ok(());
    };
    let presented = header
        .and_then(bearer)
        .or(query.map(str::trim).filter(|t| !t.is_empty()))
        .ok_or(Denied::NoReadToken)?;
    let matches = |t: &Token| constant_time_eq(presented.as_bytes(), t.expose().as_bytes());
    if matches(read) || action.is_some_and(matches) {
        Ok(())
    } else {
        Err(Denied::NoReadToken)
    }
}

/// Whether a request naming `host` (its `Host` header, port and all) is answered: loopback
/// names (`localhost`, `*.localhost`), IP addresses (a rebinding attack needs a name) and the
/// configured names. A request without a `Host` is refused.
pub fn host_allowed(allowed: &AllowedHosts, host: Option<&str>) -> bool {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return false;
    };
    if *allowed == AllowedHosts::Any {
        return true;
    }
    let name = strip_port(host);
    if name.starts_with('[') {
        // A bracketed IPv6 literal: `[::1]`.
        return name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    match allowed {
        AllowedHosts::Any => true,
        AllowedHosts::Names(names) => names.iter().any(|n| n.trim_end_matches('.') == name),
    }
}

/// `name:8080` → `name`; `[::1]:8080` → `[::1]`; a bare IPv6 address stays whole.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// The credentials of a `Bearer` header (the scheme is case-insensitive, RFC 7235).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Compares without an early exit, so the time taken says nothing about how much of a guess
/// was right. It runs over the presented value, so only its own (caller-known) length shows.
pub fn constant_time_eq(presented: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != secret.len());
    for (i, b) in presented.iter().enumerate() {
        // Reading past the secret compares with 0; the length mismatch above already failed.
        let s = secret.get(i).copied().unwrap_or(0);
        diff |= b ^ s;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::parse_token;

    fn token() -> Token {
        parse_token(
            "HEMOSTAT_DASHBOARD_TOKEN",
            Some("correct-horse-battery-staple"),
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn read_only_without_a_configured_token() {
        assert_eq!(authorize(None, None), Err(Denied::ReadOnly));
        assert_eq!(
            authorize(None, Some("Bearer correct-horse-battery-staple")),
            Err(Denied::ReadOnly)
        );
        assert!(
            Denied::ReadOnly
                .message()
                .contains("HEMOSTAT_DASHBOARD_TOKEN")
        );
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let t = token();
        assert_eq!(
            authorize(Some(&t), Some("Bearer correct-horse-battery-staple")),
            Ok(())
        );
        assert_eq!(
            authorize(Some(&t), Some("bearer  correct-horse-battery-staple ")),
            Ok(())
        );
        for bad in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic correct-horse-battery-staple"),
            Some("correct-horse-battery-staple"),
            Some("Bearer correct-horse-battery-stapl"),
            Some("Bearer correct-horse-battery-staplex"),
            Some("Bearer CORRECT-horse-battery-staple"),
        ] {
            assert_eq!(authorize(Some(&t), bad), Err(Denied::BadToken), "{bad:?}");
        }
    }

    #[test]
    fn reading_needs_the_read_or_the_action_token_when_one_is_set() {
        let read = parse_token("R", Some("reader-0123456789abcdef"))
            .unwrap()
            .unwrap();
        let act = token();
        assert_eq!(authorize_read(None, None, None, None), Ok(()));
        assert_eq!(authorize_read(None, Some(&act), None, None), Ok(()));
        let ok = [
            (Some("Bearer reader-0123456789abcdef"), None),
            (Some("Bearer correct-horse-battery-staple"), None),
            (None, Some("reader-0123456789abcdef")),
            (Some("Basic x"), Some("reader-0123456789abcdef")),
        ];
        for (header, query) in ok {
            assert_eq!(
                authorize_read(Some(&read), Some(&act), header, query),
                Ok(()),
                "{header:?} {query:?}"
            );
        }
        let bad = [
            (None, None),
            (Some("Bearer reader-0123456789abcde"), None),
            (None, Some("")),
            (None, Some("correct-horse")),
            (Some("Bearer nope"), Some("reader-0123456789abcdef")),
        ];
        for (header, query) in bad {
            assert_eq!(
                authorize_read(Some(&read), Some(&act), header, query),
                Err(Denied::NoReadToken),
                "{header:?} {query:?}"
            );
        }
        assert_eq!(
            authorize_read(
                Some(&read),
                None,
                Some("Bearer correct-horse-battery-staple"),
                None
            ),
            Err(Denied::NoReadToken)
        );
    }

    #[test]
    fn only_loopback_addresses_and_named_hosts_are_answered() {
        let none = AllowedHosts::Names(vec![]);
        let named = AllowedHosts::Names(vec!["ops.example.org".into()]);
        for h in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "dash.localhost:80",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
            "::1",
        ] {
            assert!(host_allowed(&none, Some(h)), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "ops.example.org",
            "[evil]",
            "",
        ] {
            assert!(!host_allowed(&none, Some(h)), "{h}");
        }
        assert!(!host_allowed(&none, None));
        assert!(host_allowed(&named, Some("OPS.example.org:8080")));
        assert!(host_allowed(&named, Some("ops.example.org.")));
        assert!(!host_allowed(&named, Some("evil.example")));
        assert!(!host_allowed(&named, Some("ops.example.org.evil.example")));
        assert!(host_allowed(&AllowedHosts::Any, Some("evil.example")));
        assert!(!host_allowed(&AllowedHosts::Any, None));
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abc\0", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
