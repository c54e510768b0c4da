//! Who may act: a bearer token compared in constant time, or nobody when none is configured.
//!
//! The token travels in an `Authorization` header set by the page's JavaScript, never in a
//! cookie, so another site cannot make a visitor's browser act (no CSRF by construction).

use crate::config::Token;

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token is configured: the dashboard is read-only (HTTP 403).
    ReadOnly,
    /// A token is configured and the request did not carry it (HTTP 401).
    BadToken,
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
        parse_token(Some("correct-horse-battery-staple"))
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
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abc\0", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
