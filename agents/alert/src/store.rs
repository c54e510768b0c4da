//! Where a notification lives until a sink has taken it: Redis, never the process.
//!
//! - `hemostat:alert:fp:<fingerprint>`: what the engine remembers per fingerprint (firing,
//!   when last told, how many folded), with a version that every change bumps.
//! - `hemostat:alert:group` (+ `_due`, `_version`): the notifications gathered for the next
//!   message, and when it is due (`group_wait` after the first one joined).
//! - `hemostat:alert:outbox:<sink>`: each sink's deliveries in order, and per delivery
//!   `hemostat:alert:delivery:<id>`: the notifications, the attempts so far, when the next one
//!   is due, and which instance holds it (a lease) while a request is in flight.
//!
//! Every change is one [`Store::apply`]: a short Lua script that checks its preconditions
//! (a version, an owner, a marker) and makes all of its writes, or none. So a notification is
//! acked off its stream only once it is in the group (with the "handled" marker, in the same
//! step); it leaves the group only into the sinks' outboxes (in the same step); and it leaves an
//! outbox only with its `sent`, `failed` or dead-letter record (in the same step). Whatever an
//! agent is doing when it is killed, a successor finds the notification where it was.

use std::collections::HashMap;

use hemostat_common::bus::{Bus, BusError, Op};
use hemostat_common::events::DEAD_LETTER_STREAM;

use crate::engine::FpState;
use crate::notify::Notification;

/// Redis keys of the alert service's state.
pub mod keys {
    pub const GROUP: &str = "hemostat:alert:group";
    pub const GROUP_DUE: &str = "hemostat:alert:group_due";
    pub const GROUP_VERSION: &str = "hemostat:alert:group_version";

    pub fn fp(fingerprint: &str) -> String {
        format!("hemostat:alert:fp:{fingerprint}")
    }
    pub fn outbox(sink: &str) -> String {
        format!("hemostat:alert:outbox:{sink}")
    }
    pub fn delivery(id: &str) -> String {
        format!("hemostat:alert:delivery:{id}")
    }
    pub fn handled(event_id: &str) -> String {
        format!("hemostat:seen:alert:{event_id}")
    }
    /// Window occurrences holding notifications, scored by when each ends.
    pub const HELD_ENDS: &str = "hemostat:alert:held_ends";
    /// What one window occurrence (`<window id>:<occurrence>`) holds, how many, and what it is.
    pub fn held(member: &str) -> String {
        format!("hemostat:alert:held:{member}")
    }
    pub fn held_count(member: &str) -> String {
        format!("hemostat:alert:held_count:{member}")
    }
    pub fn held_about(member: &str) -> String {
        format!("hemostat:alert:held_about:{member}")
    }
}

/// A condition an [`Store::apply`] checks before it writes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pre {
    /// The key does not exist (a "handled" marker not set yet).
    Absent(String),
    /// `GET key` is this value (`""` for a missing key).
    Get(String, String),
    /// `HGET key field` is this value (`""` for a missing field).
    HGet(String, String, String),
}

/// Whether an [`Store::apply`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// A precondition did not hold: someone else changed it first.
    Stale,
}

/// One delivery as read from Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub sink: String,
    pub notifications: Vec<Notification>,
    /// The notifications as stored: what a dead letter keeps, readable or not.
    pub raw: String,
    pub attempts: u32,
    pub next_at_ms: u64,
    pub owner: String,
    pub lease_until_ms: u64,
    pub created_ms: u64,
}

/// The gathered group, as read.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub notifications: Vec<Notification>,
    pub due_ms: Option<u64>,
    pub version: String,
}

/// The alert service's view of Redis.
#[derive(Debug, Clone)]
pub struct Store {
    bus: Bus,
}

impl Store {
    pub fn new(bus: Bus) -> Store {
        Store { bus }
    }

    /// Checks `pre` and, if they all hold, runs `ops`, atomically.
    pub async fn apply(&self, pre: &[Pre], ops: &[Op]) -> Result<Applied, BusError> {
        // ARGV: number of preconditions, each as kind + arguments (a: key; g: key value;
        // h: key field value), then each op as kind ('c' command) + argument count + arguments.
        const SCRIPT: &str = r#"
            local n = tonumber(ARGV[1])
            local i = 2
            for _ = 1, n do
                local kind = ARGV[i]
                if kind == 'a' then
                    if redis.call('EXISTS', ARGV[i + 1]) == 1 then return 0 end
                    i = i + 2
                elseif kind == 'g' then
                    local v = redis.call('GET', ARGV[i + 1]) or ''
                    if v ~= ARGV[i + 2] then return 0 end
                    i = i + 3
                else
                    local v = redis.call('HGET', ARGV[i + 1], ARGV[i + 2]) or ''
                    if v ~= ARGV[i + 3] then return 0 end
                    i = i + 4
                end
            end
            while i <= #ARGV do
                local argc = tonumber(ARGV[i + 1])
                local args = {}
                for j = 1, argc do args[j] = ARGV[i + 1 + j] end
                redis.call(unpack(args))
                i = i + 2 + argc
            end
            return 1
        "#;
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let mut inv = COMPILED.prepare_invoke();
        inv.arg(pre.len());
        for p in pre {
            match p {
                Pre::Absent(k) => {
                    inv.arg("a").arg(k);
                }
                Pre::Get(k, v) => {
                    inv.arg("g").arg(k).arg(v);
                }
                Pre::HGet(k, f, v) => {
                    inv.arg("h").arg(k).arg(f).arg(v);
                }
            }
        }
        for op in ops {
            // Conditions are preconditions here; only plain commands are ops.
            if let Op::Cmd(args) = op {
                inv.arg("c").arg(args.len());
                for a in args {
                    inv.arg(a);
                }
            }
        }
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<i64> = inv.invoke_async(&mut conn).await;
        Ok(if r.map_err(BusError::from)? == 1 {
            Applied::Done
        } else {
            Applied::Stale
        })
    }

    /// Several fingerprints' states and versions, in one round trip.
    pub async fn fps(
        &self,
        fingerprints: &[&str],
    ) -> Result<Vec<(String, (FpState, String))>, BusError> {
        if fingerprints.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for fp in fingerprints {
            pipe.cmd("HGETALL").arg(keys::fp(fp));
        }
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<Vec<HashMap<String, String>>> = pipe.query_async(&mut conn).await;
        let all = r.map_err(BusError::from)?;
        Ok(fingerprints
            .iter()
            .zip(all)
            .map(|(fp, f)| {
                let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
                let state = FpState {
                    firing: f.get("firing").is_some_and(|v| v == "1"),
                    told_ms: num("told_ms"),
                    folded: num("folded").unwrap_or(0) as u32,
                };
                (
                    (*fp).to_owned(),
                    (state, f.get("v").cloned().unwrap_or_default()),
                )
            })
            .collect())
    }

    /// The group being gathered.
    pub async fn group(&self) -> Result<Group, BusError> {
        let mut conn = self.bus.connection();
        type Raw = (HashMap<String, String>, Option<u64>, Option<String>);
        let r: redis::RedisResult<Raw> = redis::pipe()
            .cmd("HGETALL")
            .arg(keys::GROUP)
            .cmd("GET")
            .arg(keys::GROUP_DUE)
            .cmd("GET")
            .arg(keys::GROUP_VERSION)
            .query_async(&mut conn)
            .await;
        let (members, due, version) = r.map_err(BusError::from)?;
        let mut notifications: Vec<Notification> = members
            .values()
            .filter_map(|raw| match serde_json::from_str(raw) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "a grouped notification could not be read; it is left out");
                    None
                }
            })
            .collect();
        notifications.sort_by_key(|n| n.at);
        Ok(Group {
            notifications,
            due_ms: due,
            version: version.unwrap_or_default(),
        })
    }

    /// When the group is due, if there is one.
    pub async fn group_due(&self) -> Result<Option<u64>, BusError> {
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<Option<u64>> = redis::cmd("GET")
            .arg(keys::GROUP_DUE)
            .query_async(&mut conn)
            .await;
        r.map_err(BusError::from)
    }

    /// The first delivery of `sink`'s outbox, and how many it holds.
    pub async fn head(&self, sink: &str) -> Result<(Option<Delivery>, u64), BusError> {
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<(Vec<String>, u64)> = redis::pipe()
            .cmd("ZRANGE")
            .arg(keys::outbox(sink))
            .arg(0)
            .arg(0)
            .cmd("ZCARD")
            .arg(keys::outbox(sink))
            .query_async(&mut conn)
            .await;
        let (ids, len) = r.map_err(BusError::from)?;
        let Some(id) = ids.into_iter().next() else {
            return Ok((None, len));
        };
        let r: redis::RedisResult<HashMap<String, String>> = redis::cmd("HGETALL")
            .arg(keys::delivery(&id))
            .query_async(&mut conn)
            .await;
        let f = r.map_err(BusError::from)?;
        if f.is_empty() {
            // Its record is gone (removed by hand): it cannot be delivered; drop it.
            let _: redis::RedisResult<()> = redis::cmd("ZREM")
                .arg(keys::outbox(sink))
                .arg(&id)
                .query_async(&mut conn)
                .await;
            return Ok((None, len.saturating_sub(1)));
        }
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let raw = f.get("batch").cloned().unwrap_or_default();
        let notifications: Vec<Notification> = match serde_json::from_str(&raw) {
            Ok(n) => n,
            Err(e) => {
                // Nothing to send: the worker dead-letters it with what is stored.
                tracing::warn!(sink, delivery = %id, error = %e, "a delivery's notifications could not be read");
                Vec::new()
            }
        };
        Ok((
            Some(Delivery {
                sink: f.get("sink").cloned().unwrap_or_else(|| sink.to_owned()),
                notifications,
                raw,
                attempts: num("attempts") as u32,
                next_at_ms: num("next_at"),
                owner: f.get("owner").cloned().unwrap_or_default(),
                lease_until_ms: num("lease_until"),
                created_ms: num("created"),
                id,
            }),
            len,
        ))
    }
}

/// The ops that put a delivery of `notifications` at the end of `sink`'s outbox, due now.
pub fn enqueue_ops(sink: &str, notifications: &[Notification], now_ms: u64, seq: u64) -> Vec<Op> {
    let id = ulid::Ulid::new().to_string();
    let batch = serde_json::to_string(notifications).unwrap_or_else(|_| "[]".into());
    let now = now_ms.to_string();
    vec![
        Op::cmd([
            "HSET",
            &keys::delivery(&id),
            "sink",
            sink,
            "batch",
            &batch,
            "attempts",
            "0",
            "next_at",
            &now,
            "owner",
            "",
            "lease_until",
            "0",
            "created",
            &now,
        ]),
        Op::cmd(["ZADD", &keys::outbox(sink), &seq.to_string(), &id]),
    ]
}

/// The ops that take a delivery out of its sink's outbox.
pub fn remove_ops(d: &Delivery) -> Vec<Op> {
    vec![
        Op::cmd(["DEL", &keys::delivery(&d.id)]),
        Op::cmd(["ZREM", &keys::outbox(&d.sink), &d.id]),
    ]
}

/// The op that records one decision in `stream` (the notification history), trimmed to
/// `min_id_ms` and `maxlen`.
pub fn history_op(stream: &str, min_id_ms: u64, fields: &[(&str, &str)]) -> Op {
    let mut args: Vec<String> = vec![
        "XADD".into(),
        stream.into(),
        "MINID".into(),
        "~".into(),
        min_id_ms.to_string(),
        "*".into(),
    ];
    for (k, v) in fields {
        args.push((*k).to_owned());
        args.push((*v).to_owned());
    }
    Op::Cmd(args)
}

/// The op that parks what a sink never took in the dead-letter stream.
pub fn dead_letter_op(source: &str, reason: &str, payload: &str, at: &str) -> Op {
    let cut = payload.len().min(64 * 1024);
    let mut cut_at = cut;
    while !payload.is_char_boundary(cut_at) {
        cut_at -= 1;
    }
    Op::cmd([
        "XADD",
        DEAD_LETTER_STREAM,
        "MAXLEN",
        "~",
        "1000",
        "*",
        "source",
        source,
        "group",
        "",
        "entry_id",
        "",
        "reason",
        reason,
        "payload",
        &payload[..cut_at],
        "at",
        at,
    ])
}

/// The op that writes a fingerprint's new state (and bumps its version), living `ttl_s`.
/// The version a write makes of `version` (`""`, none yet, becomes `1`).
pub fn next_version(version: &str) -> String {
    (version.parse::<u64>().unwrap_or(0) + 1).to_string()
}

pub fn fp_ops(fingerprint: &str, s: FpState, version: &str, ttl_s: u64) -> Vec<Op> {
    let next = next_version(version);
    let key = keys::fp(fingerprint);
    vec![
        Op::cmd([
            "HSET",
            &key,
            "firing",
            if s.firing { "1" } else { "0" },
            "told_ms",
            &s.told_ms.map(|t| t.to_string()).unwrap_or_default(),
            "folded",
            &s.folded.to_string(),
            "v",
            &next.to_string(),
        ]),
        Op::cmd(["EXPIRE", &key, &ttl_s.max(1).to_string()]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_never_cuts_a_character_in_half() {
        let payload = "é".repeat(40 * 1024);
        let Op::Cmd(args) = dead_letter_op("alert:slack", "r", &payload, "now") else {
            panic!("a command")
        };
        let kept = &args[args.len() - 3];
        assert!(kept.len() <= 64 * 1024);
        assert!(kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn fingerprint_writes_bump_the_version() {
        let ops = fp_ops("h/web/died", FpState::default(), "41", 60);
        let Op::Cmd(args) = &ops[0] else {
            panic!("a command")
        };
        let v = args.iter().position(|a| a == "v").map(|i| &args[i + 1]);
        assert_eq!(v.map(String::as_str), Some("42"));
        let ops = fp_ops("h/web/died", FpState::default(), "", 60);
        let Op::Cmd(args) = &ops[0] else {
            panic!("a command")
        };
        assert_eq!(args.last().map(String::as_str), Some("1"));
    }
}
