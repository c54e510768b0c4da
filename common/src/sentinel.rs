//! Finding the Redis master through Redis Sentinel: the sentinel list from the configuration,
//! asking the sentinels in turn who the master is, and the master URL built from `REDIS_URL`'s
//! credentials and database with the address the sentinels named.

use std::time::Duration;

/// Where the master is learnt from: the sentinels and the name they monitor it under.
#[derive(Clone)]
pub struct Sentinels {
    /// `host:port` of each sentinel, asked in this order.
    pub addrs: Vec<String>,
    /// The master's name in the sentinels' `sentinel monitor` line.
    pub master: String,
    /// The sentinels' own password (`requirepass` in sentinel.conf), if they have one.
    pub password: Option<String>,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels")
            .field("addrs", &self.addrs)
            .field("master", &self.master)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Splits a comma-separated `host:port` list; empty means no sentinels. The error says which
/// entry is wrong and why.
pub fn parse_addrs(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((host, port)) = part.rsplit_once(':') else {
            return Err(format!("{part:?} has no port"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            return Err(format!("{part:?} has no usable host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("{part:?} has no usable port (1-65535)")),
        }
        out.push(part.to_owned());
    }
    Ok(out)
}

/// `redis_url` with its host and port replaced by `host:port`, keeping scheme, user, password
/// and database, so each service's own Redis user works on whichever node is master.
pub fn master_url(redis_url: &str, host: &str, port: u16) -> String {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let Some(scheme_end) = redis_url.find("://") else {
        return format!("redis://{addr}");
    };
    let rest = &redis_url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority
        .rfind('@')
        .map(|at| &authority[..=at])
        .unwrap_or("");
    format!(
        "{}{userinfo}{addr}{}",
        &redis_url[..scheme_end + 3],
        &rest[authority_end..]
    )
}

impl Sentinels {
    /// Asks each sentinel in turn for the master's address; the first answer wins. Each ask
    /// is bounded so a dead sentinel costs at most a second.
    pub async fn resolve(&self) -> Result<(String, u16), String> {
        let mut errors = Vec::new();
        for addr in &self.addrs {
            match tokio::time::timeout(Duration::from_secs(1), self.ask(addr)).await {
                Ok(Ok(Some(found))) => return Ok(found),
                Ok(Ok(None)) => errors.push(format!("{addr}: master {:?} unknown", self.master)),
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: no answer within 1s")),
            }
        }
        Err(format!(
            "no sentinel named the master {:?} ({})",
            self.master,
            errors.join("; ")
        ))
    }

    async fn ask(&self, addr: &str) -> redis::RedisResult<Option<(String, u16)>> {
        let url = match &self.password {
            Some(p) => format!("redis://:{}@{addr}", urlencode(p)),
            None => format!("redis://{addr}"),
        };
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await?;
        Ok(reply)
    }
}

/// Percent-encodes what a URL's userinfo cannot carry as is.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_parse_or_name_the_bad_entry() {
        let check = |raw: &str, ok: bool| assert_eq!(parse_addrs(raw).is_ok(), ok, "{raw}");
        check("", true);
        check("a:26379,b:26379 , c:1", true);
        check("[::1]:26379", true);
        check("a", false);
        check("a:0", false);
        check("a:x", false);
        check(":26379", false);
        check("a:70000", false);
        assert_eq!(parse_addrs(" a:1,,b:2 ").unwrap(), ["a:1", "b:2"]);
    }

    #[test]
    fn master_url_keeps_credentials_and_database() {
        let check = |url: &str, want: &str| assert_eq!(master_url(url, "10.0.0.2", 6380), want);
        check("redis://127.0.0.1:6379", "redis://10.0.0.2:6380");
        check("redis://u:p@redis:6379/2", "redis://u:p@10.0.0.2:6380/2");
        check("rediss://:p@redis", "rediss://:p@10.0.0.2:6380");
        check(
            "redis://u:p@redis:6379?protocol=resp3",
            "redis://u:p@10.0.0.2:6380?protocol=resp3",
        );
    }
}
