//! Every Redis read the dashboard makes, each bounded: `XREVRANGE ... COUNT n` on streams, a
//! capped `SCAN` for heartbeat keys, one `PTTL` per listed container for breakers. The only
//! writes are the actions' (in [`crate::api`]).

use std::collections::BTreeMap;

use hemostat_common::bus::{Bus, BusError};
use hemostat_common::events::{
    AUDIT_STREAM, Channel, Envelope, HEARTBEAT_KEY_PREFIX, STREAM_FIELD_ENVELOPE,
};
use redis::Value;
use serde::Serialize;

use crate::model::{Breaker, ContainerRow, History};

/// Most heartbeat keys listed: far more instances than any fleet runs.
const MAX_HEARTBEAT_KEYS: usize = 1000;
/// Most `SCAN` round trips for them, so a huge keyspace cannot make a request slow.
const MAX_SCAN_ROUNDS: usize = 50;
/// Most containers whose breaker is looked up per request.
const MAX_BREAKER_LOOKUPS: usize = 2000;

/// Reads the channel streams the overview and the containers need.
pub async fn history(bus: &Bus, count: usize) -> Result<History, BusError> {
    let (health, needed, false_alarms, complete, alerts, metrics) = tokio::try_join!(
        bus.recent(Channel::HealthAlert, count),
        bus.recent(Channel::RemediationNeeded, count),
        bus.recent(Channel::FalseAlarm, count),
        bus.recent(Channel::RemediationComplete, count),
        bus.recent(Channel::Alerts, count),
        bus.recent(Channel::Metrics, count),
    )?;
    Ok(History {
        health,
        needed,
        false_alarms,
        complete,
        alerts,
        metrics,
        count,
    })
}

/// The newest `count` envelopes of each of `channels`' streams.
pub async fn channels(
    bus: &Bus,
    channels: &[Channel],
    count: usize,
) -> Result<Vec<Vec<Envelope>>, BusError> {
    let reads = channels.iter().map(|c| bus.recent(*c, count));
    futures::future::try_join_all(reads).await
}

/// One stream entry with its fields as text.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The stream entry id (`<ms>-<seq>`).
    pub stream_id: String,
    pub fields: BTreeMap<String, String>,
}

impl Entry {
    pub fn get(&self, k: &str) -> &str {
        self.fields.get(k).map(String::as_str).unwrap_or_default()
    }

    /// The envelope in the entry, when it has one that decodes.
    pub fn envelope(&self) -> Option<Envelope> {
        Envelope::from_json(self.fields.get(STREAM_FIELD_ENVELOPE)?).ok()
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The newest `count` entries of any stream, newest first.
pub async fn entries(bus: &Bus, stream: &str, count: usize) -> Result<Vec<Entry>, BusError> {
    let mut conn = bus.connection();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|e| Entry {
            stream_id: e.id,
            fields: e
                .map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), text(v)?)))
                .collect(),
        })
        .collect())
}

/// The audit stream, newest first.
pub async fn audit(bus: &Bus, count: usize) -> Result<Vec<Entry>, BusError> {
    entries(bus, AUDIT_STREAM, count).await
}

/// The latest heartbeat of every instance whose key has not expired.
pub async fn live_heartbeats(bus: &Bus) -> Result<Vec<Envelope>, BusError> {
    let mut conn = bus.connection();
    let pattern = format!("{HEARTBEAT_KEY_PREFIX}*");
    let mut cursor: u64 = 0;
    let mut keys: Vec<String> = Vec::new();
    for _ in 0..MAX_SCAN_ROUNDS {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= MAX_HEARTBEAT_KEYS {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    keys.truncate(MAX_HEARTBEAT_KEYS);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
    Ok(values
        .into_iter()
        .flatten()
        .filter_map(|raw| Envelope::from_json(&raw).ok())
        .collect())
}

/// The breaker key of a container: the responder's own naming, not a copy of it.
pub use hemostat_responder::keys::breaker as breaker_key;

/// Fills in each row's breaker state, one `PTTL` per row in one round trip.
pub async fn fill_breakers(bus: &Bus, rows: &mut [ContainerRow]) -> Result<(), BusError> {
    let n = rows.len().min(MAX_BREAKER_LOOKUPS);
    if n == 0 {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for r in &rows[..n] {
        pipe.cmd("PTTL").arg(breaker_key(&r.host, &r.name));
    }
    let mut conn = bus.connection();
    let ttls: Vec<i64> = pipe.query_async(&mut conn).await?;
    for (r, pttl) in rows.iter_mut().zip(ttls) {
        r.breaker = Breaker::from_pttl(pttl);
    }
    Ok(())
}

/// Whether Redis answers a `PING` now.
pub async fn ping(bus: &Bus) -> Result<(), BusError> {
    let mut conn = bus.connection();
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}
