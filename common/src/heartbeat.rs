//! The heartbeat: every agent instance announces itself on `hemostat:heartbeat` and keeps a TTL
//! key (`hemostat:heartbeat:<agent>:<instance>`) alive, so a dashboard can tell who is up
//! without having listened at the right moment.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::bus::Bus;
use crate::events::{Envelope, HEARTBEAT_KEY_PREFIX, Heartbeat, Payload};
use crate::http::Health;
use crate::shutdown::Shutdown;

/// Who is beating.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent: String,
    pub instance: String,
    pub host: String,
    pub started_at: DateTime<Utc>,
}

/// The key that says `identity` is alive.
pub fn key(agent: &str, instance: &str) -> String {
    format!("{HEARTBEAT_KEY_PREFIX}{agent}:{instance}")
}

/// Builds one heartbeat envelope.
pub fn envelope(identity: &Identity, interval: Duration, degraded: Vec<String>) -> Envelope {
    let uptime = (Utc::now() - identity.started_at).num_seconds().max(0) as u64;
    Envelope::new(
        &identity.agent,
        &identity.host,
        Payload::Heartbeat(Heartbeat {
            instance: identity.instance.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: identity.started_at,
            uptime_secs: uptime,
            interval_secs: interval.as_secs().max(1),
            degraded,
        }),
    )
}

/// Beats every `interval` until shutdown. The TTL key lives three intervals, so one lost beat
/// is not "down". On shutdown the key is deleted, so a clean stop is not mistaken for a crash.
pub async fn run(
    bus: Bus,
    identity: Identity,
    interval: Duration,
    health: Health,
    shutdown: Shutdown,
) {
    let key = key(&identity.agent, &identity.instance);
    let ttl = (interval * 3).as_secs().max(3);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let env = envelope(&identity, interval, health.reasons());
        let mut pipe = redis::pipe();
        pipe.atomic();
        bus.add_publish(&mut pipe, &env);
        pipe.cmd("SET")
            .arg(&key)
            .arg(env.to_json())
            .arg("EX")
            .arg(ttl)
            .ignore();
        if let Err(e) = bus.run(&pipe).await {
            tracing::debug!(error = %e, "heartbeat not delivered");
        }
    }
    let mut conn = bus.connection();
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
}
