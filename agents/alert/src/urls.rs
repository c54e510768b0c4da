//! Notification URLs: one scheme per service (`slack://`, `ntfy://`, `mailto://`, ...), in the
//! spirit of Apprise and shoutrrr, parsed into a sink [`Kind`] with its options.
//!
//! Every URL holds a secret (a webhook token, a bot token, a password), so nothing here ever
//! repeats one: errors name the URL by its scheme and position only, and [`shown`] is what a
//! log may print.
//!
//! Options every URL takes, in its query: `name=` (the sink's name in metrics and history),
//! `severity=` (the least severity it is sent), and for services hosted by their vendor
//! `api=` (another base URL: an EU region, a proxy, a self-hosted Telegram bot API, a test
//! server).

use hemostat_common::events::Severity;

use crate::sink::{Email, EmailTls, Kind, Preset};

/// Most URLs a configuration may hold (each is a sink with its own outbox and worker).
pub const MAX_URLS: usize = 64;

/// What one URL configures.
#[derive(Clone)]
pub struct Parsed {
    /// What it sends to: one sink, or for a Telegram URL naming several chats one per chat.
    pub kinds: Vec<Kind>,
    /// `name=`, else the scheme's own name.
    pub name: Option<String>,
    pub min_severity: Option<Severity>,
}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parsed")
            .field("kinds", &self.kinds)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why a URL was refused; never quotes the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scheme}:// URL {why}")]
pub struct UrlError {
    pub scheme: String,
    pub why: String,
}

/// The schemes understood, as a person reads them in an error.
pub const SCHEMES: &str = "slack, discord, teams, ntfy(s), gotify(s), telegram (tgram), \
     pushover (pover), matrix(s), mailto, smtp(s), pagerduty, opsgenie, json(s)";

/// What a log may show of a URL: its scheme only.
pub fn shown(raw: &str) -> String {
    match raw.split_once("://") {
        Some((scheme, _)) if scheme.len() <= 16 => format!("{scheme}://…"),
        _ => "(not a URL)".to_owned(),
    }
}

/// The pieces of `scheme://[user[:password]@]host[/path...][?query]`, percent-decoded.
#[derive(Debug, Default)]
struct Parts {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    /// The first piece after the user info: a host (with its port) or, for services whose
    /// host is fixed, a token.
    host: String,
    /// The same piece as written (a host is never percent-decoded).
    host_raw: String,
    path: Vec<String>,
    query: Vec<(String, String)>,
}

impl Parts {
    fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` (`+` stays `+`: these are URLs, not forms).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi * 16 + lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes `s` for a URL path segment or a form value: everything but the unreserved
/// characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn split(raw: &str) -> Result<Parts, UrlError> {
    let raw = raw.trim();
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(UrlError {
            scheme: "?".into(),
            why: "has no scheme (expected e.g. slack://…, ntfy://…, mailto://…)".into(),
        });
    };
    let scheme = scheme.to_ascii_lowercase();
    let bad = |why: &str| UrlError {
        scheme: scheme.clone(),
        why: why.to_owned(),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let mut parts = Parts {
        scheme: scheme.clone(),
        ..Parts::default()
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k).ok_or_else(|| bad("has a badly percent-encoded query"))?;
        let v = decode(v).ok_or_else(|| bad("has a badly percent-encoded query"))?;
        parts.query.push((k, v));
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let host = match authority.rsplit_once('@') {
        Some((info, host)) => {
            let (u, p) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let u = decode(u).ok_or_else(|| bad("has a badly percent-encoded user"))?;
            parts.user = (!u.is_empty()).then_some(u);
            parts.password = match p {
                Some(p) => {
                    Some(decode(p).ok_or_else(|| bad("has a badly percent-encoded password"))?)
                }
                None => None,
            };
            host
        }
        None => authority,
    };
    parts.host_raw = host.to_owned();
    parts.host = decode(host).ok_or_else(|| bad("has a badly percent-encoded host"))?;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        parts
            .path
            .push(decode(seg).ok_or_else(|| bad("has a badly percent-encoded path"))?);
    }
    Ok(parts)
}

fn severity(raw: &str) -> Option<Severity> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "info" => Some(Severity::Info),
        "warning" | "warn" => Some(Severity::Warning),
        "critical" | "crit" => Some(Severity::Critical),
        _ => None,
    }
}

/// A sink name: lower-case letters, digits, `-` and `_`, at most 40 characters (it is part of
/// Redis keys and of a metric label).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `base` (from `api=`, else the vendor's) without a trailing `/`, checked to be http(s).
fn base(p: &Parts, vendor: &str) -> Result<String, UrlError> {
    let b = p.q("api").unwrap_or(vendor).trim_end_matches('/');
    if b.starts_with("https://") || b.starts_with("http://") {
        Ok(b.to_owned())
    } else {
        Err(UrlError {
            scheme: p.scheme.clone(),
            why: "has an api= that is not an http(s) URL".into(),
        })
    }
}

/// `http(s)://host` for the self-hosted services: `s` at the end of the scheme means TLS.
fn host_base(p: &Parts, tls: bool) -> Result<String, UrlError> {
    if p.host_raw.is_empty() || p.host_raw.contains(['<', '>', ' ', '\\']) {
        return Err(UrlError {
            scheme: p.scheme.clone(),
            why: "needs a host".into(),
        });
    }
    Ok(format!(
        "{}://{}",
        if tls { "https" } else { "http" },
        p.host_raw
    ))
}

fn need(p: &Parts, ok: bool, what: &str) -> Result<(), UrlError> {
    if ok {
        Ok(())
    } else {
        Err(UrlError {
            scheme: p.scheme.clone(),
            why: format!("needs {what}"),
        })
    }
}

/// Query keys that are our options, not the service's.
const OURS: [&str; 3] = ["name", "severity", "api"];

/// Parses one notification URL.
pub fn parse(raw: &str) -> Result<Parsed, UrlError> {
    let p = split(raw)?;
    let bad = |why: String| UrlError {
        scheme: p.scheme.clone(),
        why,
    };
    let name = match p.q("name") {
        Some(n) if valid_name(n) => Some(n.to_owned()),
        Some(_) => {
            return Err(bad(
                "has a name= that is not 1-40 of a-z, 0-9, '-' and '_'".into()
            ));
        }
        None => None,
    };
    let min_severity =
        match p.q("severity") {
            Some(s) => Some(severity(s).ok_or_else(|| {
                bad("has a severity= that is not info, warning or critical".into())
            })?),
            None => None,
        };
    let kind = match p.scheme.as_str() {
        "slack" => {
            // slack://T.../B.../X... (the three parts of an incoming-webhook URL).
            need(
                &p,
                !p.host.is_empty() && p.path.len() == 2,
                "its three webhook tokens: slack://T…/B…/X…",
            )?;
            let url = format!(
                "{}/services/{}/{}/{}",
                base(&p, "https://hooks.slack.com")?,
                encode(&p.host),
                encode(&p.path[0]),
                encode(&p.path[1])
            );
            Kind::Slack { url }
        }
        "discord" => {
            need(
                &p,
                !p.host.is_empty() && p.path.len() == 1,
                "the webhook's id and token: discord://<id>/<token>",
            )?;
            let url = format!(
                "{}/api/webhooks/{}/{}",
                base(&p, "https://discord.com")?,
                encode(&p.host),
                encode(&p.path[0])
            );
            Kind::Webhook {
                url,
                preset: Preset::Discord,
                headers: Vec::new(),
            }
        }
        "teams" => {
            // teams://<host>/<path>: the incoming-webhook (or workflow) URL with its scheme
            // swapped; `api=` replaces https://<host>.
            need(
                &p,
                !p.host_raw.is_empty() && !p.path.is_empty(),
                "the webhook's host and path: teams://<host>/<path>",
            )?;
            let path: Vec<String> = p.path.iter().map(|s| encode(s)).collect();
            let default = format!("https://{}", p.host_raw);
            let url = format!("{}/{}", base(&p, &default)?, path.join("/"));
            Kind::Webhook {
                url,
                preset: Preset::Teams,
                headers: Vec::new(),
            }
        }
        "ntfy" | "ntfys" => {
            // ntfy://<topic> is ntfy.sh; ntfy://[user:pass@]host[:port]/<topic> a server of
            // one's own (ntfys:// with TLS).
            let (server, topic) = match p.path.as_slice() {
                [] => (base(&p, "https://ntfy.sh")?, p.host.clone()),
                [topic] => (host_base(&p, p.scheme == "ntfys")?, topic.clone()),
                _ => return Err(bad("has more than a topic in its path".into())),
            };
            need(&p, !topic.is_empty(), "a topic")?;
            let mut headers = Vec::new();
            if let Some(token) = p.q("token") {
                headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
            } else if let (Some(u), Some(pw)) = (&p.user, &p.password) {
                headers.push(("Authorization".to_owned(), basic(u, pw)));
            }
            Kind::Webhook {
                url: format!("{server}/{}", encode(&topic)),
                preset: Preset::Ntfy,
                headers,
            }
        }
        "gotify" | "gotifys" => {
            // gotify://host[:port][/path]/<application token>
            let Some((token, prefix)) = p.path.split_last() else {
                return Err(bad(
                    "needs an application token: gotify://host/<token>".into()
                ));
            };
            let prefix: Vec<String> = prefix.iter().map(|s| encode(s)).collect();
            let mut url = host_base(&p, p.scheme == "gotifys")?;
            for s in prefix {
                url.push('/');
                url.push_str(&s);
            }
            url.push_str("/message");
            Kind::Gotify {
                url,
                token: token.clone(),
            }
        }
        "telegram" | "tgram" => {
            // telegram://<bot token>/<chat id>[/<chat id>...]: a sink per chat.
            need(
                &p,
                p.host.contains(':') && !p.path.is_empty(),
                "a bot token and a chat id: telegram://<bot token>/<chat id>",
            )?;
            let api = base(&p, "https://api.telegram.org")?;
            let url = format!("{api}/bot{}/sendMessage", p.host);
            let kinds = p
                .path
                .iter()
                .map(|chat| Kind::Telegram {
                    url: url.clone(),
                    chat: chat.clone(),
                })
                .collect();
            return Ok(Parsed {
                kinds,
                name,
                min_severity,
            });
        }
        "pushover" | "pover" => {
            // pushover://<user key>@<application token>[/<device>...]
            let user = p.user.clone().unwrap_or_default();
            need(
                &p,
                !user.is_empty() && !p.host.is_empty(),
                "a user key and an application token: pushover://<user>@<token>",
            )?;
            Kind::Pushover {
                url: format!("{}/1/messages.json", base(&p, "https://api.pushover.net")?),
                token: p.host.clone(),
                user,
                devices: p.path.clone(),
            }
        }
        "matrix" | "matrixs" => {
            // matrix://<access token>@host[:port]/<room id> (`!room:server`; an alias `#x:y` is
            // written %23x:y, as `#` would end the URL).
            let token = p
                .password
                .clone()
                .or_else(|| p.user.clone())
                .unwrap_or_default();
            need(
                &p,
                !token.is_empty() && p.path.len() == 1,
                "an access token and a room: matrix://<token>@host/<room id>",
            )?;
            Kind::Matrix {
                base: host_base(&p, p.scheme == "matrixs")?,
                token,
                room: p.path[0].clone(),
            }
        }
        "mailto" | "smtp" | "smtps" => {
            let tls = match (p.scheme.as_str(), p.q("tls")) {
                ("smtps", None) | (_, Some("implicit")) => EmailTls::Implicit,
                (_, None | Some("starttls")) => EmailTls::StartTls,
                (_, Some("none")) => EmailTls::None,
                _ => {
                    return Err(bad(
                        "has a tls= that is not starttls, implicit or none".into()
                    ));
                }
            };
            let (host, port) = match p.host.rsplit_once(':') {
                Some((h, port)) => (
                    h.to_owned(),
                    port.parse::<u16>()
                        .map_err(|_| bad("has a port that is not a number".into()))?,
                ),
                None => (
                    p.host.clone(),
                    if tls == EmailTls::Implicit { 465 } else { 587 },
                ),
            };
            need(
                &p,
                !host.is_empty(),
                "the SMTP server: smtp://[user:password@]host[:port]",
            )?;
            let to: Vec<String> = p
                .q("to")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            need(
                &p,
                !to.is_empty() && to.iter().all(|a| a.contains('@')),
                "recipients: ?to=a@example.com,b@example.com",
            )?;
            let from = p
                .q("from")
                .map(str::to_owned)
                .or_else(|| p.user.clone().filter(|u| u.contains('@')))
                .unwrap_or_else(|| "hemostat@localhost".into());
            Kind::Email(Box::new(Email {
                host,
                port,
                tls,
                user: p.user.clone(),
                password: p.password.clone(),
                from,
                to,
            }))
        }
        "pagerduty" => {
            need(
                &p,
                !p.host.is_empty(),
                "a routing key: pagerduty://<routing key>",
            )?;
            Kind::PagerDuty {
                url: format!("{}/v2/enqueue", base(&p, "https://events.pagerduty.com")?),
                routing_key: p.host.clone(),
            }
        }
        "opsgenie" => {
            need(&p, !p.host.is_empty(), "an API key: opsgenie://<api key>")?;
            let vendor = match p.q("region") {
                Some("eu") => "https://api.eu.opsgenie.com",
                Some("us") | None => "https://api.opsgenie.com",
                Some(_) => return Err(bad("has a region= that is not us or eu".into())),
            };
            Kind::Opsgenie {
                base: base(&p, vendor)?,
                key: p.host.clone(),
            }
        }
        "json" | "jsons" => {
            // json://host[:port]/path; `+Header=Value` in the query adds a header.
            let mut url = host_base(&p, p.scheme == "jsons")?;
            for s in &p.path {
                url.push('/');
                url.push_str(&encode(s));
            }
            let mut headers = Vec::new();
            for (k, v) in &p.query {
                if let Some(h) = k.strip_prefix('+') {
                    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                        return Err(bad("has a +header whose name is not a header name".into()));
                    }
                    headers.push((h.to_owned(), v.clone()));
                } else if !OURS.contains(&k.as_str()) {
                    return Err(bad(
                        "has an option it does not know (json:// takes +Header=value, name= and severity=)"
                            .into(),
                    ));
                }
            }
            if let (Some(u), Some(pw)) = (&p.user, &p.password) {
                headers.push(("Authorization".to_owned(), basic(u, pw)));
            }
            Kind::Webhook {
                url,
                preset: Preset::Json,
                headers,
            }
        }
        other => {
            return Err(UrlError {
                scheme: other.chars().take(16).collect(),
                why: format!("has a scheme hemostat does not know; known: {SCHEMES}"),
            });
        }
    };
    Ok(Parsed {
        kinds: vec![kind],
        name,
        min_severity,
    })
}

/// `Basic base64(user:password)`.
fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

/// Standard base64 with padding (for `Authorization: Basic`).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Splits a list of URLs: by white space, and by commas that start another URL (a comma
/// inside a URL, as in `?to=a@x,b@y`, stays).
pub fn split_list(raw: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in raw.split_whitespace().flat_map(|w| w.split(',')) {
        match out.last_mut() {
            _ if piece.is_empty() => {}
            Some(last) if !piece.contains("://") => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.to_owned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn lists_split_on_blanks_and_on_commas_that_start_a_url() {
        let cases: &[(&str, &[&str])] = &[
            ("slack://a/b/c ntfy://t", &["slack://a/b/c", "ntfy://t"]),
            ("slack://a/b/c,ntfy://t", &["slack://a/b/c", "ntfy://t"]),
            (
                "smtp://h?to=a@x,b@y,ntfy://t",
                &["smtp://h?to=a@x,b@y", "ntfy://t"],
            ),
            ("\n  slack://a/b/c \n", &["slack://a/b/c"]),
            ("smtp://h?to=a@x, b@y", &["smtp://h?to=a@x,b@y"]),
            ("", &[]),
        ];
        for (raw, want) in cases {
            assert_eq!(split_list(raw), *want, "{raw:?}");
        }
    }

    /// `(url, what the sink posts to)`.
    #[track_caller]
    fn check_url(raw: &str, want: &str) {
        let p = parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        let got: Vec<String> = p.kinds.iter().map(describe).collect();
        assert_eq!(got.join(" + "), want, "{raw}");
    }

    fn describe(k: &Kind) -> String {
        match k {
            Kind::Slack { url } | Kind::Webhook { url, .. } | Kind::PagerDuty { url, .. } => {
                url.clone()
            }
            Kind::Gotify { url, token } => format!("{url} key={token}"),
            Kind::Telegram { url, chat } => format!("{url} chat={chat}"),
            Kind::Pushover {
                url,
                token,
                user,
                devices,
            } => format!(
                "{url} token={token} user={user} devices={}",
                devices.join("|")
            ),
            Kind::Matrix { base, token, room } => format!("{base} token={token} room={room}"),
            Kind::Opsgenie { base, key } => format!("{base} key={key}"),
            Kind::Email(e) => format!(
                "{}:{} {:?} user={:?} from={} to={}",
                e.host,
                e.port,
                e.tls,
                e.user,
                e.from,
                e.to.join("|")
            ),
        }
    }

    #[test]
    fn every_scheme_reaches_its_service() {
        check_url(
            "slack://T01/B02/xyz",
            "https://hooks.slack.com/services/T01/B02/xyz",
        );
        check_url(
            "slack://T01/B02/xyz?api=http://127.0.0.1:9/",
            "http://127.0.0.1:9/services/T01/B02/xyz",
        );
        check_url(
            "discord://123/tok-en",
            "https://discord.com/api/webhooks/123/tok-en",
        );
        check_url(
            "teams://acme.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d",
            "https://acme.webhook.office.com/webhookb2/a%40b/IncomingWebhook/c/d",
        );
        check_url("ntfy://alerts", "https://ntfy.sh/alerts");
        check_url("ntfy://ntfy.lan:8080/ops", "http://ntfy.lan:8080/ops");
        check_url(
            "ntfys://ntfy.example.com/ops",
            "https://ntfy.example.com/ops",
        );
        check_url(
            "gotify://gotify.lan/AbC.123",
            "http://gotify.lan/message key=AbC.123",
        );
        check_url(
            "gotifys://example.com/gotify/AbC",
            "https://example.com/gotify/message key=AbC",
        );
        check_url(
            "telegram://123456:AA-bb_CC/-100200/42",
            "https://api.telegram.org/bot123456:AA-bb_CC/sendMessage chat=-100200 + https://api.telegram.org/bot123456:AA-bb_CC/sendMessage chat=42",
        );
        check_url(
            "tgram://1:x/%40mychannel",
            "https://api.telegram.org/bot1:x/sendMessage chat=@mychannel",
        );
        check_url(
            "pushover://uKEY@aTOKEN/phone/tablet",
            "https://api.pushover.net/1/messages.json token=aTOKEN user=uKEY devices=phone|tablet",
        );
        check_url(
            "matrixs://syt_tok@matrix.example.org/!room:example.org",
            "https://matrix.example.org token=syt_tok room=!room:example.org",
        );
        check_url(
            "matrix://:syt_tok@127.0.0.1:8008/%23ops:example.org",
            "http://127.0.0.1:8008 token=syt_tok room=#ops:example.org",
        );
        check_url(
            "mailto://me%40example.com:pw@smtp.example.com?to=ops@example.com,oncall@example.com",
            "smtp.example.com:587 StartTls user=Some(\"me@example.com\") from=me@example.com to=ops@example.com|oncall@example.com",
        );
        check_url(
            "smtps://u:p@mail.example.com?to=a@b.c&from=hemostat@b.c",
            "mail.example.com:465 Implicit user=Some(\"u\") from=hemostat@b.c to=a@b.c",
        );
        check_url(
            "smtp://127.0.0.1:2525?to=a@b.c&tls=none",
            "127.0.0.1:2525 None user=None from=hemostat@localhost to=a@b.c",
        );
        check_url(
            "pagerduty://R0UT1NG",
            "https://events.pagerduty.com/v2/enqueue",
        );
        check_url(
            "opsgenie://KEY-1?region=eu",
            "https://api.eu.opsgenie.com key=KEY-1",
        );
        check_url("json://127.0.0.1:8080/hook", "http://127.0.0.1:8080/hook");
        check_url(
            "jsons://hooks.example.com/a/b",
            "https://hooks.example.com/a/b",
        );
    }

    #[test]
    fn options_and_headers() {
        let p = parse("json://h/x?+X-Token=abc&name=ops-hook&severity=warning").unwrap();
        assert_eq!(p.name.as_deref(), Some("ops-hook"));
        assert_eq!(p.min_severity, Some(Severity::Warning));
        let Kind::Webhook { headers, .. } = p.kinds[0].clone() else {
            panic!()
        };
        assert_eq!(headers, [("X-Token".to_owned(), "abc".to_owned())]);
        let Kind::Webhook { headers, .. } = parse("ntfy://u:p@h/t").unwrap().kinds[0].clone()
        else {
            panic!()
        };
        assert_eq!(
            headers,
            [("Authorization".to_owned(), "Basic dTpw".to_owned())]
        );
        let Kind::Webhook { headers, .. } =
            parse("ntfys://h/t?token=tk_1").unwrap().kinds[0].clone()
        else {
            panic!()
        };
        assert_eq!(headers[0].1, "Bearer tk_1");
    }

    #[test]
    fn bad_urls_say_why_and_never_repeat_the_secret() {
        let cases: &[(&str, &str)] = &[
            ("hooks.slack.com/SECRETPART", "no scheme"),
            ("slack://SECRETPART", "three webhook tokens"),
            ("carrier://SECRETPART", "does not know"),
            ("telegram://SECRETPART", "bot token"),
            ("mailto://u:SECRETPART@h", "recipients"),
            ("smtp://u:SECRETPART@h:port?to=a@b", "port"),
            ("json://h/p?SECRETPART=1", "option"),
            ("json://h/p?name=Bad%20Name", "name="),
            ("ntfy://t?severity=loud", "severity="),
            ("slack://a/b/c?api=ftp://SECRETPART", "api="),
            ("pushover://SECRETPART", "user key"),
            ("opsgenie://k?region=mars", "region="),
            ("slack://a%zz/b/c", "percent-encoded"),
        ];
        for (raw, want) in cases {
            let e = parse(raw).unwrap_err().to_string();
            assert!(e.contains(want), "{raw}: {e}");
            assert!(!e.contains("SECRETPART"), "{raw} leaked: {e}");
        }
        assert_eq!(shown("slack://T/B/SECRET"), "slack://…");
    }

    #[test]
    fn base64_matches_the_standard() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("u:p", "dTpw"),
        ] {
            assert_eq!(base64(raw.as_bytes()), want);
        }
    }
}
