//! The host's remediation queue in Redis: where every request waits, and where the state of an
//! action survives the responder that started it.
//!
//! A request taken off `hemostat:stream:remediation_needed` becomes a *job*: a hash
//! (`hemostat:job:<host>:<request id>`) holding the request and its phase, and a member of a
//! sorted set (`hemostat:jobs:<host>`) scored by the time someone should look at it next. That
//! one score is both the due time of a wait (backoff, storm, rate limit, the next verification
//! look) and the lease of a responder working on it: claiming a due job moves its score to
//! `now + lease`, and a live owner keeps pushing it forward. A responder that dies (SIGKILL,
//! OOM, a lost node) stops renewing; the score falls due and any responder of the host takes
//! the job over from its recorded phase. Nothing waits in a task, so a container in a 300 s
//! backoff holds no slot, no lock and no stream entry.
//!
//! Phases: `queued` (not acted on; judged by the guards from fresh facts each time it is
//! looked at), `acting` (the action was recorded as begun, the Docker call may or may not have
//! reached Docker), `verifying` (the action reached Docker; looking for its effect). A job
//! leaves the queue only in the same atomic step that publishes its report
//! ([`Queue::finish_ops`] with `Bus::publish_once_with`), so a report is never lost and never
//! written twice.

use std::collections::HashMap;
use std::time::Duration;

use hemostat_common::bus::{Bus, BusError, Op};
use hemostat_common::events::{Envelope, Guard, Payload, RemediationRequest};

/// Redis keys of the responder's shared state. Containers are keyed by name: compose
/// recreates a container under the same name, and its history must follow it.
pub mod keys {
    pub fn history(host: &str, name: &str) -> String {
        format!("hemostat:history:{host}:{name}")
    }
    pub fn breaker(host: &str, name: &str) -> String {
        format!("hemostat:breaker:{host}:{name}")
    }
    pub fn lock(host: &str, name: &str) -> String {
        format!("hemostat:lock:{host}:{name}")
    }
    /// The storm episode in progress on a host (its id), while a storm holds.
    pub fn storm(host: &str) -> String {
        format!("hemostat:storm:{host}")
    }
    /// Containers with an open request that began failing, scored by when.
    pub fn failing(host: &str) -> String {
        format!("hemostat:failing:{host}")
    }
    /// The host's Docker writes of the last minute.
    pub fn writes(host: &str) -> String {
        format!("hemostat:writes:{host}")
    }
    /// When the host's last cleanup ran (expires with the cooldown).
    pub fn cleanup(host: &str) -> String {
        format!("hemostat:cleanup:{host}")
    }
    pub fn jobs(host: &str) -> String {
        format!("hemostat:jobs:{host}")
    }
    pub fn job(host: &str, id: &str) -> String {
        format!("hemostat:job:{host}:{id}")
    }
    pub fn handled(host: &str, id: &str) -> String {
        hemostat_common::events::responder_reported_key(host, id)
    }
    /// "This escalation was sent": one per storm, breaker opening or restart-policy loop.
    pub fn escalated(host: &str, what: &str) -> String {
        format!("hemostat:seen:responder:{host}:escalation:{what}")
    }
}

/// The name under which host-wide cleanups keep their lock, history and breaker.
pub const CLEANUP_NAME: &str = "(cleanup)";

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Acting,
    Verifying,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Acting => "acting",
            Phase::Verifying => "verifying",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        match s {
            "queued" => Some(Phase::Queued),
            "acting" => Some(Phase::Acting),
            "verifying" => Some(Phase::Verifying),
            _ => None,
        }
    }
}

/// One request in the queue, as claimed.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub env: Envelope,
    pub req: RemediationRequest,
    pub phase: Phase,
    pub admitted_at_ms: u64,
    pub acted_at_ms: Option<u64>,
    /// The container's start time when the action began (ms), if it had one.
    pub started_before_ms: Option<u64>,
    pub verify_until_ms: Option<u64>,
    /// Verification looks so far.
    pub looks: u32,
    /// What the last verification look saw.
    pub last_look: String,
    /// The guard that last held it back, and why.
    pub waiting: Option<(String, String)>,
}

impl Job {
    /// When its action began, as the guards judge verification by.
    pub fn acted(&self) -> crate::guards::Acted {
        crate::guards::Acted {
            at_ms: self.acted_at_ms.unwrap_or(self.admitted_at_ms),
            started_before_ms: self.started_before_ms,
        }
    }

    /// The container's name, or the cleanup's.
    pub fn name(&self) -> &str {
        self.req
            .container
            .as_ref()
            .map_or(CLEANUP_NAME, |c| c.name.as_str())
    }
}

/// What admitting a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    New,
    /// Already queued, or already reported: nothing to do.
    Known,
    /// The queue is at its bound: leave the request on the stream for later.
    Full,
}

/// What recording "the action begins" found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    Recorded,
    /// Another request holds the container's lock.
    Locked(String),
    /// The host's write budget was spent meanwhile.
    NoSlot,
    /// The job is no longer ours (our lease lapsed and a peer took it), or moved on.
    Lost,
}

/// A job whose steps have ended this many times without finishing (counted over its life, as a
/// stream entry's deliveries are) is poison: it is dead-lettered with its request instead of
/// run again. Only a claim that lapsed counts; a clean stop hands jobs back and does not.
pub const MAX_LAPSES: u64 = 5;

/// A claimed job that must not run again, and why.
#[derive(Debug)]
pub struct Broken {
    pub id: String,
    pub why: String,
    /// The stored request, as it was (empty when there was none).
    pub request: String,
}

/// The host's queue, for one responder instance.
#[derive(Debug, Clone)]
pub struct Queue {
    bus: Bus,
    host: String,
    owner: String,
    lease: Duration,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Queue {
    pub fn new(bus: Bus, host: &str, owner: &str, lease: Duration) -> Queue {
        Queue {
            bus,
            host: host.to_owned(),
            owner: owner.to_owned(),
            lease,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn jobs(&self) -> String {
        keys::jobs(&self.host)
    }

    fn job_key(&self, id: &str) -> String {
        keys::job(&self.host, id)
    }

    fn prefix(&self) -> String {
        keys::job(&self.host, "")
    }

    /// Puts a request in the queue, due now, unless it is known already or the queue holds
    /// `max` jobs. Idempotent on the request id: a redelivered entry adds nothing.
    pub async fn admit(
        &self,
        env: &Envelope,
        req: &RemediationRequest,
        now_ms: u64,
        max: usize,
    ) -> Result<Admitted, BusError> {
        // KEYS: handled marker, job hash, jobs, failing. ARGV: request, now, id, name that
        // counts as failing (or ''), max.
        const SCRIPT: &str = r#"
            if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
                return 0
            end
            if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return -1 end
            redis.call('HSET', KEYS[2], 'request', ARGV[1], 'phase', 'queued', 'owner', '',
                'admitted_at', ARGV[2], 'failing', ARGV[4])
            redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
            if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[4]) end
            return 1
        "#;
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        // A container the request is about is failing now; a dependent is not.
        let failing = match (&req.container, &req.problem) {
            (Some(c), Some(p))
                if p.kind != hemostat_common::events::ProblemKind::DependencyRestarted =>
            {
                c.name.as_str()
            }
            (Some(c), None) => c.name.as_str(),
            _ => "",
        };
        let mut inv = COMPILED.key(keys::handled(&self.host, &env.id));
        inv.key(self.job_key(&env.id))
            .key(self.jobs())
            .key(keys::failing(&self.host))
            .arg(env.to_json())
            .arg(now_ms)
            .arg(&env.id)
            .arg(failing)
            .arg(max);
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<i64> = inv.invoke_async(&mut conn).await;
        Ok(match r.map_err(BusError::from)? {
            1 => Admitted::New,
            -1 => Admitted::Full,
            _ => Admitted::Known,
        })
    }

    /// Claims up to `limit` jobs that are due, for `lease`. Returns them with those that must
    /// not run again, which the caller dead-letters: a job whose request no longer decodes,
    /// and one whose claims have lapsed [`MAX_LAPSES`] times without its step finishing.
    pub async fn claim(
        &self,
        limit: usize,
        now_ms: u64,
    ) -> Result<(Vec<Job>, Vec<Broken>), BusError> {
        // KEYS: jobs, failing. ARGV: now, lease end, limit, owner, job key prefix.
        const SCRIPT: &str = r#"
            local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
            local out = {}
            for _, id in ipairs(ids) do
                local key = ARGV[5] .. id
                if redis.call('EXISTS', key) == 1 then
                    -- Still owned: the last claim ended without its step finishing (the
                    -- responder died, hung or panicked there).
                    local was = redis.call('HGET', key, 'owner')
                    if was and was ~= '' then redis.call('HINCRBY', key, 'lapses', 1) end
                    redis.call('ZADD', KEYS[1], ARGV[2], id)
                    redis.call('HSET', key, 'owner', ARGV[4])
                    -- A container whose failure an earlier report closed is failing again
                    -- while this request is open.
                    local f = redis.call('HGET', key, 'failing')
                    if f and f ~= '' then
                        redis.call('ZADD', KEYS[2], 'NX', redis.call('HGET', key, 'admitted_at'), f)
                    end
                    table.insert(out, id)
                    table.insert(out, redis.call('HGETALL', key))
                else
                    redis.call('ZREM', KEYS[1], id)
                end
            end
            return out
        "#;
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let mut inv = COMPILED.key(self.jobs());
        inv.key(keys::failing(&self.host))
            .arg(now_ms)
            .arg(now_ms + ms(self.lease))
            .arg(limit.max(1))
            .arg(&self.owner)
            .arg(self.prefix());
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<Vec<redis::Value>> = inv.invoke_async(&mut conn).await;
        let flat = r.map_err(BusError::from)?;
        let mut jobs = Vec::new();
        let mut broken = Vec::new();
        for pair in flat.chunks(2) {
            let [id, fields] = pair else { continue };
            let Ok(id) = redis::from_redis_value::<String>(id.clone()) else {
                continue;
            };
            let fields: HashMap<String, String> =
                redis::from_redis_value(fields.clone()).unwrap_or_default();
            let lapses = fields
                .get("lapses")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let request = fields.get("request").cloned().unwrap_or_default();
            match decode(&id, &fields) {
                Ok(_) if lapses >= MAX_LAPSES => broken.push(Broken {
                    id,
                    why: format!(
                        "its step ended {lapses} times without finishing (it crashed, hung or panicked each time)"
                    ),
                    request,
                }),
                Ok(job) => jobs.push(job),
                Err(why) => broken.push(Broken { id, why, request }),
            }
        }
        Ok((jobs, broken))
    }

    /// When the earliest job falls due (ms), if any.
    pub async fn next_due(&self) -> Result<Option<u64>, BusError> {
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<Vec<(String, f64)>> = redis::cmd("ZRANGE")
            .arg(self.jobs())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await;
        Ok(r.map_err(BusError::from)?
            .first()
            .map(|(_, s)| s.max(0.0) as u64))
    }

    /// How many jobs the host's queue holds.
    pub async fn depth(&self) -> Result<u64, BusError> {
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<u64> = redis::cmd("ZCARD")
            .arg(self.jobs())
            .query_async(&mut conn)
            .await;
        r.map_err(BusError::from)
    }

    /// Hands the job back, due at `until_ms`, recording what it waits for; the lock it holds
    /// (while verifying) is kept until then. False when it was no longer ours.
    pub async fn defer(
        &self,
        job: &Job,
        until_ms: u64,
        phase: Phase,
        waiting: Option<(Guard, &str)>,
        look: Option<&str>,
        now_ms: u64,
    ) -> Result<bool, BusError> {
        // KEYS: jobs, job. ARGV: id, due, owner, phase, guard, why, look, lock ttl (ms).
        const SCRIPT: &str = r#"
            if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[3] then return 0 end
            redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
            redis.call('HSET', KEYS[2], 'owner', '', 'phase', ARGV[4], 'guard', ARGV[5],
                'why', ARGV[6])
            if ARGV[7] ~= '' then
                redis.call('HSET', KEYS[2], 'last_look', ARGV[7])
                redis.call('HINCRBY', KEYS[2], 'looks', 1)
            end
            local lock = redis.call('HGET', KEYS[2], 'lock')
            if lock and ARGV[4] ~= 'queued' then redis.call('PEXPIRE', lock, ARGV[8]) end
            return 1
        "#;
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let (guard, why) = waiting.map_or(("", ""), |(g, w)| (g.as_str(), w));
        let mut inv = COMPILED.key(self.jobs());
        inv.key(self.job_key(&job.id))
            .arg(&job.id)
            .arg(until_ms)
            .arg(&self.owner)
            .arg(phase.as_str())
            .arg(guard)
            .arg(why)
            .arg(look.unwrap_or(""))
            .arg(until_ms.saturating_sub(now_ms) + ms(self.lease));
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<i64> = inv.invoke_async(&mut conn).await;
        Ok(r.map_err(BusError::from)? == 1)
    }

    /// Records that the action begins, in one atomic step: takes the container's lock (or finds
    /// it ours), spends a slot of the host's write budget (not in dry run), records the
    /// remediation in the container's history (member = the request id, so a retry after a
    /// crash never counts it twice), starts a cleanup's cooldown, and moves the job to
    /// `acting`. Nothing is written unless all of it is.
    #[allow(clippy::too_many_arguments)]
    pub async fn intent(
        &self,
        job: &Job,
        now_ms: u64,
        history_horizon: Duration,
        write_rate: u32,
        dry_run: bool,
        cleanup_cooldown: Option<Duration>,
        verify_until_ms: u64,
        started_before_ms: Option<u64>,
    ) -> Result<Intent, BusError> {
        // KEYS: job, lock, history, writes, cleanup. ARGV: owner, id, now, lock ttl, history
        // horizon, rate, dry ('1'), cleanup cooldown s ('0' = none), verify until, the
        // container's start time ('0' = none).
        const SCRIPT: &str = r#"
            if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'lost' end
            if redis.call('HGET', KEYS[1], 'phase') ~= 'queued' then return 'lost' end
            local holder = redis.call('GET', KEYS[2])
            if holder and holder ~= ARGV[2] then return 'locked:' .. holder end
            local now = tonumber(ARGV[3])
            if ARGV[7] ~= '1' then
                redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 60000)
                if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[6]) then return 'noslot' end
                redis.call('ZADD', KEYS[4], now, ARGV[2])
                redis.call('PEXPIRE', KEYS[4], 60000)
            end
            redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
            redis.call('ZADD', KEYS[3], now, ARGV[2])
            redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))
            redis.call('PEXPIRE', KEYS[3], ARGV[5])
            if ARGV[8] ~= '0' then redis.call('SET', KEYS[5], now, 'EX', ARGV[8]) end
            redis.call('HSET', KEYS[1], 'phase', 'acting', 'acted_at', now, 'lock', KEYS[2],
                'verify_until', ARGV[9], 'started_before', ARGV[10])
            return 'ok'
        "#;
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let name = job.name();
        let mut inv = COMPILED.key(self.job_key(&job.id));
        inv.key(keys::lock(&self.host, name))
            .key(keys::history(&self.host, name))
            .key(keys::writes(&self.host))
            .key(keys::cleanup(&self.host))
            .arg(&self.owner)
            .arg(&job.id)
            .arg(now_ms)
            .arg(verify_until_ms.saturating_sub(now_ms) + ms(self.lease))
            .arg(ms(history_horizon).max(1))
            .arg(write_rate)
            .arg(if dry_run { "1" } else { "0" })
            .arg(cleanup_cooldown.map_or(0, |d| d.as_secs().max(1)))
            .arg(verify_until_ms)
            .arg(started_before_ms.unwrap_or(0));
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<String> = inv.invoke_async(&mut conn).await;
        let r = r.map_err(BusError::from)?;
        Ok(match r.as_str() {
            "ok" => Intent::Recorded,
            "noslot" => Intent::NoSlot,
            other => match other.strip_prefix("locked:") {
                Some(holder) => Intent::Locked(holder.to_owned()),
                None => Intent::Lost,
            },
        })
    }

    /// Moves an owned job to `phase` (kept owned). False when it was no longer ours.
    pub async fn set_phase(&self, job: &Job, phase: Phase) -> Result<bool, BusError> {
        const SCRIPT: &str = r#"
            if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
            redis.call('HSET', KEYS[1], 'phase', ARGV[2])
            return 1
        "#;
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let mut inv = COMPILED.key(self.job_key(&job.id));
        inv.arg(&self.owner).arg(phase.as_str());
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<i64> = inv.invoke_async(&mut conn).await;
        Ok(r.map_err(BusError::from)? == 1)
    }

    /// Pushes the lease of every job in `ids` that is still ours, and the lock each holds.
    pub async fn renew(&self, ids: &[String], now_ms: u64) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        // ARGV: lease end, owner, job key prefix, lock ttl (ms), then the ids.
        const SCRIPT: &str = r#"
            for i = 5, #ARGV do
                local key = ARGV[3] .. ARGV[i]
                if redis.call('HGET', key, 'owner') == ARGV[2] then
                    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
                    local lock = redis.call('HGET', key, 'lock')
                    if lock then redis.call('PEXPIRE', lock, ARGV[4]) end
                end
            end
            return 1
        "#;
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let mut inv = COMPILED.key(self.jobs());
        inv.arg(now_ms + ms(self.lease))
            .arg(&self.owner)
            .arg(self.prefix())
            .arg(2 * ms(self.lease));
        for id in ids {
            inv.arg(id);
        }
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<i64> = inv.invoke_async(&mut conn).await;
        r.map(|_| ()).map_err(BusError::from)
    }

    /// Hands back every job in `ids` that is still ours, due now, for a peer or a successor
    /// (a clean shutdown).
    pub async fn release(&self, ids: &[String], now_ms: u64) -> Result<(), BusError> {
        if ids.is_empty() {
            return Ok(());
        }
        const SCRIPT: &str = r#"
            for i = 4, #ARGV do
                local key = ARGV[3] .. ARGV[i]
                if redis.call('HGET', key, 'owner') == ARGV[2] then
                    redis.call('HSET', key, 'owner', '')
                    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
                end
            end
            return 1
        "#;
        static COMPILED: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));
        let mut inv = COMPILED.key(self.jobs());
        inv.arg(now_ms).arg(&self.owner).arg(self.prefix());
        for id in ids {
            inv.arg(id);
        }
        let mut conn = self.bus.connection();
        let r: redis::RedisResult<i64> = inv.invoke_async(&mut conn).await;
        r.map(|_| ()).map_err(BusError::from)
    }

    /// The state changes that take a finished job out of the queue: applied in the same atomic
    /// step as its report.
    pub fn finish_ops(&self, job: &Job) -> Vec<Op> {
        let id = job.id.as_str();
        let mut ops = vec![
            Op::cmd(["ZREM", &self.jobs(), id]),
            Op::cmd(["DEL", &self.job_key(id)]),
            Op::del_if_eq(&keys::lock(&self.host, job.name()), id),
        ];
        if let Some(c) = &job.req.container {
            ops.push(Op::cmd(["ZREM", &keys::failing(&self.host), &c.name]));
        }
        ops
    }

    /// The state changes that queue a new request (a dependent to restart after its parent),
    /// due now: applied in the same atomic step as the parent's report, so dependents are
    /// queued exactly once.
    pub fn enqueue_ops(&self, env: &Envelope, now_ms: u64) -> Vec<Op> {
        let key = self.job_key(&env.id);
        let now = now_ms.to_string();
        vec![
            Op::cmd([
                "HSET",
                &key,
                "request",
                &env.to_json(),
                "phase",
                "queued",
                "owner",
                "",
                "admitted_at",
                &now,
                "failing",
                "",
            ]),
            Op::cmd(["ZADD", &self.jobs(), &now, &env.id]),
        ]
    }

    /// Removes a job whose report is already out (it died between the two).
    pub async fn forget(&self, job: &Job) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for op in self.finish_ops(job) {
            match op {
                Op::Cmd(args) => {
                    let mut cmd = redis::cmd(&args[0]);
                    for a in &args[1..] {
                        cmd.arg(a);
                    }
                    pipe.add_command(cmd).ignore();
                }
                // The lock is released by its owner only; it expires otherwise.
                Op::DelIfEq(_) => {}
            }
        }
        self.bus.run(&pipe).await
    }

    /// Removes a job that can never be handled (its request does not decode).
    pub async fn drop_broken(&self, id: &str) -> Result<(), BusError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREM")
            .arg(self.jobs())
            .arg(id)
            .ignore()
            .cmd("DEL")
            .arg(self.job_key(id))
            .ignore();
        self.bus.run(&pipe).await
    }
}

fn decode(id: &str, f: &HashMap<String, String>) -> Result<Job, String> {
    let raw = f.get("request").ok_or("the job has no request")?;
    let env = Envelope::from_json(raw).map_err(|e| format!("undecodable request: {e}"))?;
    let Payload::RemediationNeeded(req) = env.payload.clone() else {
        return Err("the job's envelope is not a remediation request".into());
    };
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    Ok(Job {
        id: id.to_owned(),
        phase: f
            .get("phase")
            .and_then(|p| Phase::parse(p))
            .unwrap_or(Phase::Queued),
        admitted_at_ms: num("admitted_at").unwrap_or(0),
        acted_at_ms: num("acted_at"),
        started_before_ms: num("started_before").filter(|t| *t > 0),
        verify_until_ms: num("verify_until"),
        looks: num("looks").unwrap_or(0) as u32,
        last_look: f.get("last_look").cloned().unwrap_or_default(),
        waiting: match (f.get("guard"), f.get("why")) {
            (Some(g), Some(w)) if !g.is_empty() => Some((g.clone(), w.clone())),
            _ => None,
        },
        env,
        req,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hemostat_common::events::{Action, AnalysisMethod, ContainerRef};

    fn request_env() -> Envelope {
        Envelope::new(
            "analyzer",
            "h",
            Payload::RemediationNeeded(RemediationRequest {
                requested_by: None,
                container: Some(ContainerRef {
                    id: "c1".into(),
                    name: "web".into(),
                    ..ContainerRef::default()
                }),
                target_host: "h".into(),
                action: Action::Restart,
                root_cause: "crash".into(),
                reason: "rule crash".into(),
                confidence: 0.9,
                analysis_method: AnalysisMethod::Rules,
                fallback_reason: None,
                alert_id: "a1".into(),
                problem: None,
            }),
        )
    }

    #[test]
    fn a_job_decodes_from_its_hash() {
        let env = request_env();
        let f = HashMap::from([
            ("request".to_owned(), env.to_json()),
            ("phase".to_owned(), "verifying".to_owned()),
            ("admitted_at".to_owned(), "100".to_owned()),
            ("acted_at".to_owned(), "150".to_owned()),
            ("looks".to_owned(), "2".to_owned()),
            ("guard".to_owned(), "backoff".to_owned()),
            ("why".to_owned(), "backing off 10 s".to_owned()),
        ]);
        let job = decode(&env.id, &f).unwrap();
        assert_eq!(job.phase, Phase::Verifying);
        assert_eq!((job.admitted_at_ms, job.acted_at_ms), (100, Some(150)));
        assert_eq!(job.looks, 2);
        assert_eq!(job.name(), "web");
        assert_eq!(
            job.waiting,
            Some(("backoff".into(), "backing off 10 s".into()))
        );
    }

    #[test]
    fn a_broken_job_says_why() {
        assert!(decode("x", &HashMap::new()).is_err());
        let f = HashMap::from([("request".to_owned(), "{".to_owned())]);
        assert!(decode("x", &f).unwrap_err().contains("undecodable"));
    }
}
